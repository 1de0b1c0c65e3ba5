"""Checkpoints are checked before use: a forged, truncated or decompression-bomb last.ckpt is refused
by `mim train --resume` with one line naming the field (or the file), before anything is loaded
into a module; genuine checkpoints of both stages pass."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from click.testing import CliRunner

from mim_lightning.cli import main
from mim_lightning.config import load_config
from mim_lightning.errors import MimError
from mim_lightning.training import checkpoints
from mim_lightning.training.checkpoints import CHECKPOINT, load_checkpoint
from mim_lightning.training.plan import plan_run
from mim_lightning.training.run import _resume_state

MIM = shutil.which("mim") or os.path.join(os.path.dirname(sys.executable), "mim")
SMALL = ["data.d=16", "data.alpha=8", "data.alpha2=8", "data.n_test=256", "model.width=16",
         "stage2.solver=gd", "stage2.loss=huber", "stage2.steps=3"]
FINISHED = [*SMALL, "stage1.steps=3"]                                            # its last.ckpt: stage 2, step 3
INTERRUPTED = [*SMALL, "stage1.steps=2000", "checkpoint.every_n_steps=5"]      # stopped mid-stage-1


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (its checkpoint is at stage 2)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = CliRunner().invoke(main, ["train", "--out", str(out), *sets(FINISHED)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped by SIGTERM mid-stage-1 (its checkpoint is at stage 1)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    process = subprocess.Popen([MIM, "train", "--out", str(out), *sets(INTERRUPTED)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / CHECKPOINT).exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    return out


def copy_of(run, tmp_path):
    """The run folder copied, its results.json removed (so that --resume runs)."""
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "results.json").unlink(missing_ok=True)
    return out


def forge(out, mutate):
    """Rewrite out's checkpoint with ``mutate`` applied to its content."""
    state = torch.load(out / CHECKPOINT, weights_only=True)
    mutate(state)
    torch.save(state, out / CHECKPOINT)


def resume(out):
    return CliRunner().invoke(main, ["train", "--resume", str(out)])


def refused(result, out, *needles):
    """Exit 1, one line 'Error: ...' containing the needles, no traceback, no results."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: cannot resume") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (out / "results.json").exists()
    return lines[0]


def test_a_genuine_stage2_checkpoint_resumes(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    result = resume(out)
    assert result.exit_code == 0, result.output
    assert (out / "results.json").exists()


@pytest.mark.slow
def test_a_genuine_stage1_checkpoint_passes(interrupted):
    cfg = load_config(interrupted / "config.yaml")
    state = _resume_state(cfg, interrupted, [cfg.seed], plan_run(cfg, check=False),
                          {"stage1": cfg.stage1.steps, "stage2": cfg.stage2.steps})
    assert state["stage"] == "stage1" and 0 < state["step"] < cfg.stage1.steps


def set_item(container, key, value):
    container[key] = value


STAGE2_FORGERIES = {   # each field wrong in turn, on the checkpoint of stage 2, step 3 (d = 16, m = 16, K = 1, r = 2)
    "missing field": (lambda s: s.pop("optimizer"), "'optimizer' is missing"),
    "extra field": (lambda s: set_item(s, "payload", 1), "'payload' is not a field"),
    "unknown stage": (lambda s: set_item(s, "stage", "stage3"), "'stage' is 'stage3'"),
    "negative step": (lambda s: set_item(s, "step", -1), "'step' is -1"),
    "step past the end": (lambda s: set_item(s, "step", 4), "'step' is 4"),
    "step not an integer": (lambda s: set_item(s, "step", 2.0), "'step' is 2.0"),
    "config hash": (lambda s: set_item(s, "config_hash", "0" * 64), "'config_hash'"),
    "seeds": (lambda s: set_item(s, "seeds", [1]), "'seeds'"),
    "tensor shape": (lambda s: set_item(s["network"], "W", torch.zeros(1, 16, 8)), "'network.W' is (1, 16, 8)"),
    "tensor dtype": (lambda s: set_item(s["network"], "a", s["network"]["a"].double()), "'network.a'"),
    "tensor not a tensor": (lambda s: set_item(s["network"], "b", [0.0] * 16), "'network.b' is a list"),
    "missing tensor": (lambda s: s["network"].pop("b"), "'network'"),
    "extra tensor": (lambda s: set_item(s["network"], "c", torch.zeros(1)), "'network'"),
    "optimizer type": (lambda s: set_item(s, "optimizer", "sgd"), "'optimizer'"),
    "optimizer hyperparameter": (lambda s: set_item(s["optimizer"]["param_groups"][0], "lr", 10.0),
                                 "'optimizer.param_groups'"),
    "optimizer tensor": (lambda s: set_item(s["optimizer"]["state"], 0, {"momentum_buffer": torch.zeros(3)}),
                         "'optimizer.state[0]'"),
    "shift": (lambda s: set_item(s, "shift", torch.zeros(2, 2)), "'shift'"),
    "last loss": (lambda s: set_item(s, "last_loss", torch.zeros(5)), "'last_loss'"),
    "subspace basis": (lambda s: set_item(s, "subspace_basis", torch.zeros(1, 16, 99)), "'subspace_basis'"),
    "history row keys": (lambda s: s["history"][0].pop("loss"), "'history[0]'"),
    "history range": (lambda s: set_item(s["history"][1]["principal_cosines"], 0, [5.0, 0.5]),
                      "'history[1].principal_cosines'"),
    "history order": (lambda s: set_item(s["history"][1], "step", 0), "'history[1].step'"),
    "history type": (lambda s: set_item(s, "history", "rows"), "'history'"),
    "stage1 outputs keys": (lambda s: s["stage1"].pop("timings"), "'stage1'"),
    "stage1 history empty": (lambda s: set_item(s["stage1"], "history", []), "'stage1.history' is empty"),
    "stage1 direction mass": (lambda s: set_item(s["stage1"], "direction_mass", [[0.5]]), "'stage1.direction_mass'"),
    "stage1 fraction": (lambda s: set_item(s["stage1"], "unbounded_fraction", [-5.0]), "'stage1.unbounded_fraction'"),
    "stage1 spectral": (lambda s: set_item(s["stage1"], "spectral", {"largest": [[1.0]]}), "'stage1.spectral'"),
    "stage1 timings": (lambda s: set_item(s["stage1"], "timings", {"stage1": "fast"}), "'stage1.timings'"),
}


@pytest.mark.parametrize("name", STAGE2_FORGERIES)
def test_a_forged_stage2_checkpoint_is_refused_naming_the_field(finished, tmp_path, name):
    mutate, needle = STAGE2_FORGERIES[name]
    out = copy_of(finished, tmp_path)
    forge(out, mutate)
    refused(resume(out), out, needle, str(out / CHECKPOINT))


def test_every_field_has_a_forgery():
    named = {re.match(r"'(\w+)", needle).group(1) for _, needle in STAGE2_FORGERIES.values()}
    assert checkpoints.FIELDS | checkpoints.OPTIONAL_FIELDS <= named


STAGE1_FORGERIES = {   # on the checkpoint of stage 1 (last step 2000)
    "stage1 outputs before stage 1 ended": (lambda s: set_item(s, "stage1", {"history": []}), "'stage1'"),
    "shift length": (lambda s: set_item(s, "shift", torch.zeros(0)), "'shift'"),
    "optimizer missing": (lambda s: set_item(s, "optimizer", None), "'optimizer'"),
    "history past the step": (lambda s: set_item(s["history"][-1], "step", s["step"] + 1), ".step' is"),
    "stage2 without stage-1 outputs": (lambda s: set_item(s, "stage", "stage2"), "field '"),
    "step past the last": (lambda s: set_item(s, "step", 2001), "'step' is 2001"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", STAGE1_FORGERIES)
def test_a_forged_stage1_checkpoint_is_refused_naming_the_field(interrupted, tmp_path, name):
    mutate, needle = STAGE1_FORGERIES[name]
    out = copy_of(interrupted, tmp_path)
    forge(out, mutate)
    refused(resume(out), out, needle)


@pytest.mark.slow
def test_mim_train_resume_refuses_a_negative_step_in_one_line(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    forge(out, lambda s: set_item(s, "step", -5))
    done = subprocess.run([MIM, "train", "--resume", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "field 'step' is -5" in done.stderr, done.stderr
    assert not (out / "results.json").exists()


def test_a_truncated_or_foreign_file_is_refused(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    path = out / CHECKPOINT
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    refused(resume(out), out, "not the zip archive torch.save writes")
    path.write_bytes(b"not a checkpoint at all")
    refused(resume(out), out, "not the zip archive torch.save writes")


def bomb(path, size):
    """A checkpoint whose zip entries deflate to ``size`` bytes of zeros (written in 1 MiB pieces)."""
    genuine = zipfile.ZipFile(path)
    entries = {info.filename: genuine.read(info) for info in genuine.infolist()}
    genuine.close()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        with archive.open("archive/data/99", "w", force_zip64=True) as blob:
            for _ in range(size // 2**20):
                blob.write(bytes(2**20))


def test_a_decompression_bomb_is_refused_before_loading(finished, tmp_path, monkeypatch):
    out = copy_of(finished, tmp_path)
    path = out / CHECKPOINT
    bomb(path, 256 * 2**20)
    assert path.stat().st_size < 2**20      # under 1 MiB on disk, 256 MiB unpacked

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_load)
    refused(resume(out), out, "would unpack to 256.", "MiB")
    start = time.perf_counter()
    with pytest.raises(MimError, match="would unpack to"):
        load_checkpoint(path, 2**20)
    assert time.perf_counter() - start < 1
