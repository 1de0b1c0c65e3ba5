"""The hostile-input catalogue: every bad input ends with one line naming the culprit, a non-zero
exit, no traceback and no results.json (a run that had started records the error in status.json)."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mim_lightning import hookimpl
from mim_lightning.cli import main

from helpers import TINY, plugin_registered


class HostilePlugin:
    """Components that break in every way a plugin author can manage."""

    @hookimpl
    def register_links(self, register):
        register("wrong_shape", lambda z: z)
        register("nan_link", lambda z: z[..., 0] * float("nan"))
        register("inf_link", lambda z: z[..., 0] / 0.0)
        register("inf_far_out", lambda z: torch.where(z[..., 0].abs() > 3.5, float("inf"), z[..., 0]))
        register("raising_link", lambda z: z.no_such_method())

    @hookimpl
    def register_losses(self, register):
        register("raising_loss", lambda t, y: (_ for _ in ()).throw(ValueError("boom")))
        register("detached_loss", lambda t, y: ((t - y) ** 2).detach())
        register("scalar_loss", lambda t, y: ((t - y) ** 2).mean())
        # differentiable on the probe's small inputs, detached on the training data's larger ones
        register("detached_far_out", lambda t, y: (t - y) ** 2 if float(y.abs().max()) < 3.5 else ((t - y) ** 2).detach())

    @hookimpl
    def register_activations(self, register):
        register("raising_act", lambda u: u.numpy())
        register("sign_act", lambda u: torch.sign(u).detach())
        register("float64_act", lambda u: (u.double() ** 2) / 2)


@pytest.fixture
def hostile():
    with plugin_registered(HostilePlugin(), "hostile"):
        yield


def invoke(tmp_path, *args):
    return CliRunner().invoke(main, ["train", "--out", str(tmp_path / "run"), *map(str, args)])


def check_one_line(result, tmp_path, *needles):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("Warning: ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "run" / "results.json").exists()
    status = tmp_path / "run" / "status.json"
    if status.exists():
        assert json.loads(status.read_text())["status"] == "failed"
    return lines[0]


def sets(*items):
    return [arg for item in (*TINY, *items) for arg in ("--set", item)]


CONFIG_CASES = [
    (["data.d=-5"], ["data.d", "greater than 0"]),
    (["data.d=abc"], ["data.d", "valid integer"]),
    (["data.d=1.5"], ["data.d", "integer"]),
    (["data.alpha=-1"], ["data.alpha", "greater than 0"]),
    (["data.noise=-0.1"], ["data.noise", "greater than or equal to 0"]),
    (["data.alhpa=3"], ["data.alhpa", "did you mean 'data.alpha'"]),
    (["optimizer.lr=3"], ["unknown config key 'optimizer'"]),
    (["data=5"], ["'data'", "dictionary"]),
    (["data.d=8", "data.r=9"], ["data.r = 9 must be <= data.d = 8"]),
    (["data.alpha2=0.01"], ["data.alpha2 * data.d gives 0 samples"]),
    (["data.n_test=1"], ["data.n_test", "greater than or equal to 2"]),
    (["model.width=31"], ["model.width = 31 must be even"]),
    (["seed=-1"], ["seed"]),
    (["stage1.steps=0"], ["stage1.steps", "greater than 0"]),
    (["stage1.center=maybe"], ["stage1.center", "boolean"]),
    (["trainer.devices=0"], ["trainer.devices' (--devices)", "positive integer, -1 (all devices) or 'auto'"]),
    (["trainer.strategy=warp"], ["trainer settings", "strategy='warp'"]),
    (["data.link=z1z3"], ["data.link: unknown link 'z1z3'", "available:"]),
    (["model.activation=gelu"], ["model.activation: unknown activation 'gelu'", "available:"]),
    (["stage2.loss=l1"], ["stage2.loss: unknown loss 'l1'"]),
]


@pytest.mark.parametrize("overrides, needles", CONFIG_CASES)
def test_bad_config_values(tmp_path, overrides, needles):
    check_one_line(invoke(tmp_path, *sets(*overrides)), tmp_path, *needles)


@pytest.mark.parametrize("text, needle", [
    ("", "is empty"),
    ("data: {d: 3\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("just a string\n", "must hold a mapping"),
])
def test_bad_config_files(tmp_path, text, needle):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    check_one_line(invoke(tmp_path, path), tmp_path, str(path), needle)


def test_missing_config_file_and_bad_override(tmp_path):
    check_one_line(invoke(tmp_path, tmp_path / "nope.yaml"), tmp_path, "does not exist")
    check_one_line(invoke(tmp_path, "--set", "data.d"), tmp_path, "expected KEY=VALUE")


WRONG_SHAPE = ("link 'wrong_shape' returned shape (2, 16, 2) for z of shape (2, 16, 2); a link must map z of shape"
               " (..., r) to y of shape (...)")


@pytest.mark.parametrize("overrides, needles", [
    (["data.link=wrong_shape"], ["data.link: " + WRONG_SHAPE]),
    (["data.link=nan_link"], ["data.link: link 'nan_link' returned NaN or inf for z of shape (2, 16, 2)"]),
    (["data.link=inf_link"], ["data.link: link 'inf_link' returned NaN or inf"]),
    (["data.link=raising_link"], ["data.link: link 'raising_link' raised AttributeError for z of shape (2, 16, 2)"]),
    (["data.link=inf_far_out"], ["link 'inf_far_out' returned NaN or inf for z of shape"]),  # finite on the probe, not on data
    (["stage1.loss=raising_loss"], ["stage1.loss: loss 'raising_loss' raised ValueError for t and y of shape (2, 16): boom"]),
    (["stage2.loss=detached_loss", "stage2.solver=gd"], ["stage2.loss: loss 'detached_loss' is not differentiable in t"]),
    (["stage1.loss=scalar_loss"], ["stage1.loss: loss 'scalar_loss' returned shape () for t and y of shape (2, 16);"
                                   " a loss must map t and y of one shape to per-sample values of that shape"]),
    (["model.activation=raising_act"], ["model.activation: activation 'raising_act' raised RuntimeError"]),
    (["model.activation=sign_act"], ["model.activation: activation 'sign_act' is not differentiable in u"]),
])
def test_broken_components(tmp_path, hostile, overrides, needles):
    check_one_line(invoke(tmp_path, *sets(*overrides)), tmp_path, *needles)


def test_non_finite_labels_stop_data_generation():
    from mim_lightning.core.streams import make_split, random_subspace
    from mim_lightning.errors import MimError

    U = random_subspace(0, 8, 2, "cpu")[None]
    link = lambda z: torch.where(z[..., 0].abs() > 2.5, float("inf"), z[..., 0])  # noqa: E731
    with pytest.raises(MimError, match=r"link 'far' returned NaN or inf for z of shape \(1024, 2\)"):
        make_split([0], "d1", 2000, U, link, "far", 0.0, 0, 1, "cpu")


def test_diverging_learning_rate(tmp_path):
    line = check_one_line(invoke(tmp_path, *sets("stage1.lr=1e6", "stage1.weight_decay=0", "model.init_scale=1",
                                                 "stage1.steps=40", "stage1.loss=squared")),
                          tmp_path, "stage 1 diverged by step", "stage1.lr")
    assert "1000000.0" in line


def test_out_of_memory_is_refused_before_allocating(tmp_path):
    check_one_line(invoke(tmp_path, *sets("data.d=100000", "data.alpha=100000", "data.alpha2=1", "data.stream=false")),
                   tmp_path, "the run needs about", "GiB", "the largest part is data", "data.stream=true")
    # the weights count too (a width that alone exceeds the memory)
    check_one_line(invoke(tmp_path, *sets("data.d=2000000", "model.width=8192", "data.alpha=1", "data.alpha2=1",
                                          "data.n_test=16", "data.r=2")),
                   tmp_path, "the largest part is weights", "model.width")


def test_resume_of_a_directory_without_a_run(tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path)])
    check_one_line(result, tmp_path, "config file", "does not exist")


def test_unexpected_errors_are_one_line_too(tmp_path, monkeypatch):
    import mim_lightning.training.run as runner

    def explode(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    monkeypatch.setattr(runner, "train_replicas", explode)
    check_one_line(invoke(tmp_path, *sets()), tmp_path, "out of memory", "data.chunk_size")


def test_vanishing_weights_are_stopped_with_advice(tmp_path):
    """Steps that multiply W by ~0.1 underflow it long before T1: say so instead of reporting noise."""
    check_one_line(invoke(tmp_path, *sets("stage1.lr=0.05", "stage1.weight_decay=20", "stage1.steps=60",
                                          "metrics.flush_every_n_steps=60")),
                   tmp_path, "stage 1 vanished by step", "raise stage1.lr")


# --- issue 11: bounded input, one line naming the key and what is allowed --------------------------

BOMB = "\n".join([
    'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
    *(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")),
    "seed: *h",
]) + "\n"  # nine lines, 9^9 strings once expanded (it took 80 s and 9.6 GB)
DEEP = "seed: " + "[" * 5000 + "]" * 5000 + "\n"  # a RecursionError in PyYAML's composer
FILE = object()  # in ARGS below: the path of a config file holding the case's text
CATALOGUE = [  # (config text or None, arguments after 'mim', substring of the one line, exit status)
    (BOMB, ["train", FILE], "aliases are not supported in configs", 1),
    (DEEP, ["train", FILE], "nested more than 20 levels deep at line 1", 1),
    ("seed: 1\ndata: {d: 32}\nseed: 2\n", ["train", FILE], "duplicate key 'seed' at line 3 (first at line 1)", 1),
    ("data:\n  d: 32\n  d: 64\n", ["train", FILE], "duplicate key 'd' at line 3 (first at line 2)", 1),
    ("seed: 1\n" + "#" * (1 << 20), ["train", FILE], "a config file is at most 1 MiB", 1),
    ("data.d: 16\n", ["train", FILE], "unknown config key 'data.d': YAML nests keys, write 'data: {d: ...}'", 1),
    ("data: {r: true}\n", ["train", FILE], "config key 'data.r': must be a number, not the boolean true", 1),
    (None, ["train", "--set", "data.r=TRUE"], "config key 'data.r': must be a number, not the boolean true", 1),
    (None, ["train", "--set", "seed=true"], "config key 'seed': must be a number, not the boolean true", 1),
    (None, ["train", "--devices", "yes"], "config key 'trainer.devices' (--devices): must be a positive integer,"
                                          " -1 (all devices) or 'auto' (got 'yes')", 1),
    (None, ["train", "--devices", "abc"], "config key 'trainer.devices' (--devices): must be a positive integer,"
                                          " -1 (all devices) or 'auto' (got 'abc')", 1),
    (None, ["train", "--set", "data.d=1000000000000000000000000000000"],
     "config key 'data.d': Input should be less than or equal to 16777216", 1),
    (None, ["train", "--set", "data.alpha=.inf"], "config key 'data.alpha': Input should be a finite number", 1),
    (None, ["train", "--set", "data.noise=.inf"], "config key 'data.noise': Input should be a finite number", 1),
    (None, ["train", "--set", "data.noise=.nan"], "config key 'data.noise': Input should be a finite number", 1),
    (None, ["train", "--set", "stage2.bias_scale=.inf"], "config key 'stage2.bias_scale': Input should be a finite", 1),
    (None, ["train", "--set", "stage1.steps=100000000"], "'stage1.steps': Input should be less than or equal to 10000000", 1),
    (None, ["train", "--set", "model.width=2", "--set", "data.r=2"],
     "model.width = 2 is too small for data.r = 2: it must be at least 2 * data.r (each symmetric pair spans one"
     " direction) = 4", 1),
    (None, ["train", "--set", "data.r=33"], "config key 'data.r': Input should be less than or equal to 32", 1),
    (None, ["train", "--set", "trainer.precision=64-true"],
     "config key 'trainer.precision': not supported (stage 1 runs in float32); allowed: 32-true, and on a GPU"
     " bf16-mixed or 16-mixed", 1),
    (None, ["train", "--set", "trainer.precision=16-mixed"],
     "trainer.precision = 16-mixed needs a GPU, but trainer.accelerator = cpu resolves to the CPU", 1),
    (None, ["train", "--set", "trainer.precision=bf16-mixed"], "trainer.precision = bf16-mixed needs a GPU", 1),
    (None, ["train", "--set", "seed=*a"], "aliases are not supported in configs", 1),
    (None, ["train", "--set", "data.d=" + "9" * 5000], "unreadable value", 1),
    (None, ["check", "--r", "33"], "--r 33 is above the limit of the theory computations, r <= 32", 2),
    (None, ["theory", "--link", "sum_he2", "--r", "0"], "--r must be a positive integer, got 0", 2),
    (None, ["check", "--link", "wrong_shape"], "--link: " + WRONG_SHAPE.replace("(2, 16, 2)", "(4096, 2)"), 2),
    (None, ["theory", "--link", "raising_link"], "--link: link 'raising_link' raised AttributeError for z of shape", 2),
    (None, ["check", "--loss", "scalar_loss"], "--loss: loss 'scalar_loss' returned shape () for t and y of shape", 2),
    (None, ["check", "--activation", "raising_act"], "--activation: activation 'raising_act' raised", 2),
]


@pytest.mark.parametrize("text, args, needle, code", CATALOGUE)
def test_catalogue(tmp_path, hostile, text, args, needle, code):
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    args = [str(path) if a is FILE else a for a in args]
    if args[0] == "train":  # small, should anything get through
        args = ["train", "--out", str(tmp_path / "run"), *sets(), *args[1:]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    line = check_one_line(result, tmp_path, needle)
    assert len(line) < 400  # values are echoed cut short (a 5000-digit number, an aliased structure)
    assert "did you mean 'data.d'" not in line


def test_long_values_are_echoed_cut_short(tmp_path):
    line = check_one_line(invoke(tmp_path, *sets("seed=[" + ", ".join(["12345"] * 1000) + "]")), tmp_path,
                          "config key 'seed': Input should be a valid integer (got [12345, 12345")
    assert "...]" in line and len(line) < 200


def test_a_mapping_override_merges_into_its_section():
    from mim_lightning.config import load_config

    cfg = load_config(None, ["data.r=3", "data={d: 16}", "model={width: 64}"])
    assert (cfg.data.d, cfg.data.r, cfg.model.width, cfg.model.activation) == (16, 3, 64, "logcosh")
    cfg = load_config(None, ["data={d: 16, r: 3}", "data.d=20"])  # a later key still wins
    assert (cfg.data.d, cfg.data.r) == (20, 3)


def test_the_config_limit_on_r_is_the_theory_limit():
    from mim_lightning.analysis import common
    from mim_lightning.config import MAX_R

    assert MAX_R == common.MAX_R


def test_yaml_reading_is_still_plain_yaml(tmp_path):
    from mim_lightning.config import load_config

    path = tmp_path / "ok.yaml"
    path.write_text("seed: 3  # a comment\ndata:\n  d: 64\n  alpha: 1.0e+1\nstage1: {loss: squared}\n")
    cfg = load_config(path, ["trainer.devices=2", "trainer.precision=32"])
    assert (cfg.seed, cfg.data.d, cfg.data.alpha, cfg.stage1.loss) == (3, 64, 10.0, "squared")
    assert (cfg.trainer.devices, cfg.trainer.precision) == (2, "32-true")


def test_a_sweep_file_given_to_train_says_to_use_sweep(tmp_path):
    result = CliRunner().invoke(main, ["train", str(Path(__file__).resolve().parents[1] / "configs" / "sweep_alpha.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "mim sweep" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("solver", ["gd", "lbfgs"])
def test_a_loss_detached_only_on_the_data_stops_the_run(hostile, tmp_path, solver):
    result = invoke(tmp_path, *sets("stage2.loss=detached_far_out", f"stage2.solver={solver}", "stage2.steps=3"))
    check_one_line(result, tmp_path, "stage2.loss 'detached_far_out'", "no gradient")


def test_a_float64_activation_trains(hostile, tmp_path):
    result = invoke(tmp_path, *sets("model.activation=float64_act"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test_rel_mse"] >= 0


@pytest.mark.parametrize("args, line", [
    (["theory", "--r", "abc"], "Error: Invalid value for '--r': 'abc' is not a valid integer; see 'mim theory --help'"),
    (["sweep", "x.yaml", "--max-runs", "0"], "Error: Invalid value for '--max-runs': 0 is not in the range x>=1;"
                                              " see 'mim sweep --help'"),
    (["train", "--seed", "1"], "Error: No such option '--seed'. Did you mean '--set'?; see 'mim train --help'"),
    (["trian"], "Error: No such command 'trian'. Did you mean 'train'?; see 'mim --help'"),
])
def test_click_usage_errors_are_one_line(args, line):
    """click's own usage errors (a value of the wrong type or range, an unknown option or command)
    come in one line with where to look, exit 2, like every other error."""
    result = CliRunner().invoke(main, args, prog_name="mim")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [line]
