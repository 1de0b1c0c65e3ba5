"""`mim train` end to end through click's CliRunner: the contract files, TensorBoard, bad input."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mim_lightning.cli import main
from mim_lightning.config import Config, load_config

from helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {"principal_cosines", "subspace_mass", "test_rel_mse", "spectral_principal_cosines",
            "config", "assumptions", "timings", "history"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_quickstart_yaml_is_the_default_config():
    from mim_lightning.config import all_keys, flatten
    from mim_lightning.config_yaml import read_yaml

    path = ROOT / "configs" / "quickstart.yaml"
    assert load_config(path) == Config()
    assert sorted(flatten(read_yaml(path))) == sorted(all_keys())  # every key written out


def test_train_writes_the_contract(tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY), "--set", "stage1.steps=4")
    assert result.exit_code == 0, result.output
    assert "principal cosines" in result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert CONTRACT <= set(results)
    assert len(results["principal_cosines"]) == 2
    assert results["principal_cosines"] == sorted(results["principal_cosines"], reverse=True)
    assert [h["step"] for h in results["history"]] == [0, 1, 2, 3, 4]
    assert set(results["timings"]) == {"stage1", "stage1_steps", "baseline", "stage2"}
    assert sum(results["direction_mass"]) == pytest.approx(results["subspace_mass"], rel=1e-4)
    family = results["spectral_estimators"]   # centred (the default) and uncentred, three rankings each
    assert set(family) == {"centred", "uncentred"} and all(set(f) == {"magnitude", "largest", "smallest"}
                                                           for f in family.values())
    prep, order = results["spectral_estimator"].split(", ")
    assert results["spectral_principal_cosines"] == family[prep][order]
    assert min(results["spectral_principal_cosines"]) == max(min(c) for f in family.values() for c in f.values())
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolved["stage1"]["steps"] == 4 and resolved["data"]["d"] == 32
    assert Config.model_validate(resolved) == Config.model_validate(results["config"])

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("stage1/subspace_mass", "stage1/principal_cosine_1", "stage1/principal_cosine_2",
                "stage1/principal_cosine_min", "stage1/loss", "stage1/loss_change", "stage2/loss"):
        assert tag in scalars
    assert [e.step for e in events.Scalars("stage1/subspace_mass")] == [0, 1, 2, 3, 4]
    assert [e.step for e in events.Scalars("stage1/loss")] == [1, 2, 3, 4]
    assert events.Scalars("stage1/subspace_mass")[-1].value == pytest.approx(results["subspace_mass"], rel=1e-6)
    assert events.Scalars("stage1/principal_cosine_min")[-1].value == pytest.approx(
        min(results["principal_cosines"]), rel=1e-6)
    losses = [e.value for e in events.Scalars("stage1/loss")]
    changes = [e.value for e in events.Scalars("stage1/loss_change")]
    assert changes[0] == 0.0
    for loss, change in zip(losses, changes):   # relative to the first loss; rounding (< 2^-24) reads 0
        relative = (loss - losses[0]) / abs(losses[0])
        assert change == 0.0 if abs(relative) < 2 ** -24 else change == pytest.approx(relative, rel=1e-3, abs=1e-6)
    # the reference lines span stage 1; the final metrics are single points at T1
    assert [e.step for e in events.Scalars("stage1_reference/principal_cosine_min_spectral")] == [0, 4]
    assert events.Scalars("stage1_reference/principal_cosine_min_spectral")[0].value == pytest.approx(
        min(results["spectral_principal_cosines"]), rel=1e-6)
    assert [e.step for e in events.Scalars("summary/min_principal_cosine")] == [4]


def test_metrics_every_k_steps(tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY), *sets(["stage1.steps=7", "metrics.every_n_steps=3",
                                                                  "metrics.flush_every_n_steps=2"]))
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert [h["step"] for h in results["history"]] == [0, 3, 6, 7]


@pytest.mark.parametrize("overrides, message", [
    (["data.d=-5"], "config key 'data.d': Input should be greater than 0"),
    (["data.d=0"], "config key 'data.d'"),
    (["data.d=16", "data.r=20"], "data.r = 20 must be <= data.d = 16"),
    (["data.r=40"], "config key 'data.r': Input should be less than or equal to 32 (got 40)"),
    (["data.alhpa=3"], "unknown config key 'data.alhpa' (did you mean 'data.alpha'?)"),
    (["dta.d=3"], "unknown config key 'dta'"),
    (["data.link=z1z3"], "data.link: unknown link 'z1z3' (did you mean 'z1z2'?); available: he2,"),
    (["model.activation=gelu"], "model.activation: unknown activation 'gelu'"),
    (["stage1.loss=l1"], "stage1.loss: unknown loss 'l1'"),
    (["data.d=abc"], "config key 'data.d': Input should be a valid integer"),
    (["model.width=33"], "model.width = 33 must be even"),
    (["data.link=z1z2", "data.r=1"], "data.r = 1 is too small for link 'z1z2', which needs r >= 2"),
    (["stage2.solver=ridge", "stage2.loss=huber"], "stage2.solver = ridge needs stage2.loss = squared"),
    (["stage2.solver=newton"], "config key 'stage2.solver': Input should be"),
    (["data"], "--set 'data': expected KEY=VALUE"),
])
def test_bad_input_gets_one_line_and_no_results(tmp_path, overrides, message):
    result = run("train", "--out", tmp_path, *sets(TINY), *sets(overrides))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "results.json").exists()


def test_bad_config_files(tmp_path):
    missing = run("train", tmp_path / "nope.yaml", "--out", tmp_path)
    assert missing.exit_code != 0 and "does not exist" in missing.output
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    result = run("train", listing, "--out", tmp_path)
    assert result.exit_code != 0 and "must hold a mapping" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {d: 3\n")
    result = run("train", broken, "--out", tmp_path)
    assert result.exit_code != 0 and "not valid YAML" in result.output


def test_acceptance_quickstart_recovers_both_directions(tmp_path):
    result = run("train", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr  # the defaults are inside the theory
    results = json.loads((tmp_path / "results.json").read_text())
    assert min(results["principal_cosines"]) >= 0.8
    assert results["test_rel_mse"] < 0.5


def test_acceptance_z1z2_recovers_both_signs(tmp_path):
    """z1 z2 has eigenvalues +1 and -1 on U: eta1 * beta1 = 1 must find both directions."""
    result = run("train", "--out", tmp_path, *sets(["data.link=z1z2", "data.r=2", "data.d=256", "data.alpha=16"]))
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert min(results["principal_cosines"]) >= 0.8


def test_readme_documents_every_key_and_ci_runs_its_test_command():
    """The manual's configuration table (docs/configuration.md) has a row for every key with the
    config's default, and the README's Quickstart holds the test command CI runs."""
    from mim_lightning.config import all_keys, flatten

    manual = (ROOT / "docs" / "configuration.md").read_text()
    missing = [key for key in all_keys() if f"| `{key}` |" not in manual]
    assert not missing, f"keys missing from the manual's configuration table (docs/configuration.md): {missing}"
    defaults = flatten(Config().model_dump())
    for key in all_keys():   # each row's default column is the config's default
        row = next(line for line in manual.splitlines() if line.startswith(f"| `{key}` |"))
        documented = row.split("|")[2].strip().strip("`")
        assert documented == yaml.safe_dump(defaults[key], default_flow_style=True).strip().removesuffix("...").strip() \
            or documented == str(defaults[key]), (key, documented, defaults[key])
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = [line for line in ci.splitlines() if "pytest" in line][0].strip()
    assert test_command in readme


def test_hparams_and_final_metrics_reach_tensorboard(tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY))
    assert result.exit_code == 0, result.output
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    results = json.loads((tmp_path / "results.json").read_text())
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    (point,) = events.Scalars("summary/test_rel_mse")   # one point, at T1, the value of results.json
    assert point.step == results["config"]["stage1"]["steps"]
    assert point.value == pytest.approx(results["test_rel_mse"], rel=1e-6)
    content = events.PluginTagToContent("hparams")  # the HParams entry: config -> final metrics
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos][:3] == [
        "summary/min_principal_cosine", "summary/subspace_mass", "summary/test_rel_mse"]
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.group_name == tmp_path.name   # the trial id
    # integers as their digits (TensorBoard prints numbers as 32.000), floats as numbers, booleans as booleans
    assert start.hparams["data.d"].WhichOneof("kind") == "string_value" and start.hparams["data.d"].string_value == "32"
    assert start.hparams["seed"].string_value == str(results["config"]["seed"])
    assert start.hparams["data.alpha"].number_value == results["config"]["data"]["alpha"]
    assert start.hparams["stage1.center"].WhichOneof("kind") == "bool_value"


def test_the_spectral_baseline_is_the_strongest_estimator_of_its_family(tmp_path):
    """Without centring there is one preprocessing, T(y): its three rankings, the best reported."""
    result = run("train", "--out", tmp_path, *sets(TINY), *sets(["stage1.center=false", "data.alpha=12"]))
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    family = results["spectral_estimators"]
    assert list(family) == ["uncentred"]
    best = max(family["uncentred"].items(), key=lambda item: (min(item[1]), sum(item[1])))
    assert results["spectral_estimator"] == f"uncentred, {best[0]}"
    assert results["spectral_principal_cosines"] == best[1]
    assert f"(strongest: uncentred, {best[0]})" in result.output


def test_signal_handlers_are_restored_after_runs_in_process(tmp_path):
    """Running `mim train` in-process (twice) leaves SIGINT and SIGTERM with the handlers found."""
    import signal

    def mine(signum, frame):
        raise AssertionError("not called")

    previous = signal.signal(signal.SIGINT, mine), signal.signal(signal.SIGTERM, mine)
    try:
        for k in range(2):
            result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / str(k)), *sets(TINY)])
            assert result.exit_code == 0, result.output
            assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_multi_node_without_a_launcher_fails_at_once(tmp_path, monkeypatch):
    for name in ("MASTER_ADDR", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--num-nodes", "2", *sets(TINY)])
    assert result.exit_code == 1
    assert "torchrun" in result.output and "SLURM" in result.output
    assert not (tmp_path / "results.json").exists()


def test_builtin_names_are_the_registrys():
    """plugins.names answers misspelt names without torch: its list must be what the built-ins register."""
    from mim_lightning.plugins import manager
    from mim_lightning.plugins.names import BUILTIN_NAMES

    registry = manager.get_registry()
    for kind, names in BUILTIN_NAMES.items():
        builtin = sorted(c.name for c in registry.all() if c.kind == kind and registry.plugins[c.plugin].builtin)
        assert sorted(names) == builtin, kind


@pytest.mark.slow
@pytest.mark.parametrize("args, message, code", [
    (["train", "--set", "data.link=nope"], "Error: data.link: unknown link 'nope'; available: he2,", 1),
    (["train", "--set", "stage2.loss=hubr"], "Error: stage2.loss: unknown loss 'hubr' (did you mean 'huber'?)", 1),
    (["check", "--activation", "relux"], "Error: --activation: unknown activation 'relux' (did you mean 'relu'?)", 2),
    (["theory", "--link", "he2", "--loss", "hubr"], "Error: --loss: unknown loss 'hubr' (did you mean 'huber'?)", 2),
])
def test_a_misspelt_component_is_refused_before_torch_loads(tmp_path, args, message, code):
    """The fast start: with no plugin that could provide the name, the registry's error comes
    without importing torch (1-3 s)."""
    import os
    import subprocess
    import sys

    script = ("import sys\nfrom mim_lightning.cli import main\ntry:\n    main(sys.argv[1:])\n"
              "except SystemExit as exc:\n    print(exc.code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "MIM_LIGHTNING_PLUGINS": ""}, timeout=60)
    assert done.stderr.startswith(message), done.stderr
    assert done.stdout.split() == [str(code), "False"]
