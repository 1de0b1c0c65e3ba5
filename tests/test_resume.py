"""Checkpoints and resume: a run killed (SIGKILL) or stopped (SIGTERM, SIGINT) mid-stage-1 and
resumed ends with the numbers of an uninterrupted run."""

import json
import os
import shlex
import signal
import subprocess
import time

import pytest
import torch

from mim_lightning.training.run_folder import RunFolder
from test_ddp import KEYS, MIM, as_list

pytestmark = pytest.mark.slow

SETS = ["data.d=64", "data.alpha=8", "data.alpha2=8", "data.n_test=256", "model.width=32", "stage1.steps=300",
        "checkpoint.every_n_steps=2", "stage2.loss=huber", "stage2.steps=30"]
ARGS = [arg for item in SETS for arg in ("--set", item)]


def start(out):
    return subprocess.Popen([MIM, "train", "--out", str(out), *ARGS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(out, process, timeout=120):
    path = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    return path


def finish(*args):
    done = subprocess.run([MIM, "train", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def results(out):
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    finish("--out", str(out), *ARGS)
    return results(out)


def assert_same(a, b, tol=1e-5):
    for key in KEYS:
        for x, y in zip(as_list(a[key]), as_list(b[key]), strict=True):
            assert abs(x - y) <= tol, (key, x, y)
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]]


def test_sigkill_mid_stage1_then_resume(tmp_path, uninterrupted):
    process = start(tmp_path)
    path = wait_for_checkpoint(tmp_path, process)
    process.kill()
    process.wait()
    state = torch.load(path, weights_only=True)
    assert state["stage"] == "stage1" and state["step"] < 300
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "running"
    assert RunFolder(tmp_path).status()["status"] == "stale"      # nobody holds the lock any more
    assert not (tmp_path / "results.json").exists()
    finish("--resume", str(tmp_path))
    assert_same(results(tmp_path), uninterrupted)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_cleanly_with_a_checkpoint(tmp_path, uninterrupted, sig, code):
    process = start(tmp_path)
    wait_for_checkpoint(tmp_path, process)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert f"Resume with: mim train --resume {shlex.quote(str(tmp_path))}" in stderr
    assert "Traceback" not in stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "interrupted" and "checkpoint saved" in status["message"]
    finish("--resume", str(tmp_path))
    assert_same(results(tmp_path), uninterrupted)


def test_resume_without_checkpoint_is_one_line(tmp_path):
    done = subprocess.run([MIM, "train", "--resume", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "config file" in done.stderr


def interrupted_run(out):
    """A run stopped by SIGTERM after its first checkpoint."""
    process = start(out)
    wait_for_checkpoint(out, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    return out


def test_resume_refuses_overrides_and_a_changed_config(tmp_path):
    out = interrupted_run(tmp_path / "run with space")
    before = (out / "config.yaml").read_text()
    done = subprocess.run([MIM, "train", "--resume", str(out), "--set", "seed=5"], capture_output=True, text=True)
    assert done.returncode == 1 and "no --set" in done.stderr and "Traceback" not in done.stderr
    (out / "config.yaml").write_text(before.replace("link: sum_he2", "link: z1z2"))
    done = subprocess.run([MIM, "train", "--resume", str(out)], capture_output=True, text=True)
    assert done.returncode == 1 and "another configuration" in done.stderr
    assert not (out / "results.json").exists()
    (out / "config.yaml").write_text(before)     # restored: the run can still be finished
    finish("--resume", str(out))
    assert (out / "results.json").exists()


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    finish("--out", str(tmp_path), *ARGS[:-4], "--set", "stage1.steps=3")
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    done = finish("--resume", str(tmp_path))
    assert "complete" in done.stdout
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp


def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    # Long enough that the first run is still training while the second starts (a 300-step run can
    # finish within the second process's start-up on a fast machine).
    process = subprocess.Popen([MIM, "train", "--out", str(tmp_path), *ARGS, "--set", "stage1.steps=1000000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(tmp_path, process)
    done = subprocess.run([MIM, "train", "--out", str(tmp_path), "--set", "seed=5"], capture_output=True, text=True)
    assert process.poll() is None, "the first run ended before the second process was checked"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert done.returncode == 1 and "in use by another mim process" in done.stderr
    assert "seed: 0" in (tmp_path / "config.yaml").read_text()


def test_a_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    out = interrupted_run(tmp_path / "run")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"stage": "stage1", "payload": Exploit()}, out / "checkpoints" / "last.ckpt")
    done = subprocess.run([MIM, "train", "--resume", str(out)], capture_output=True, text=True)
    assert done.returncode == 1 and "not a plain mim checkpoint" in done.stderr
    assert not marker.exists()


def wait_for_status(out, process, timeout=120):
    deadline = time.time() + timeout
    while not (out / "status.json").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the run never started"
        time.sleep(0.01)


def test_sigterm_before_the_first_step_is_an_honest_exit(tmp_path):
    """A stop while the data are generated (here a large D1) exits 143 with status interrupted, and
    says to start again: nothing was saved, so there is nothing to resume."""
    process = subprocess.Popen([MIM, "train", "--out", str(tmp_path), "--set", "data.d=2048", "--set", "data.alpha=64",
                                "--set", "model.width=16", "--set", "baseline.spectral=off"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_status(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"
    assert "start the run again" in stderr and "Resume with" not in stderr and "Traceback" not in stderr


def test_sigterm_during_a_sweep_exits_143_and_marks_the_run(tmp_path):
    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"data": {"d": 64, "alpha": 8, "alpha2": 8, "n_test": 256}, "model": {"width": 32},
                                    "stage1": {"steps": 400}, "checkpoint": {"every_n_steps": 2},
                                    "sweep": {"data.alpha": [8, 16]}}))
    out = tmp_path / "out"
    process = subprocess.Popen([MIM, "sweep", str(path), "--out", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob("runs/*/checkpoints/last.ckpt")):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    statuses = [json.loads(p.read_text())["status"] for p in out.glob("runs/*/status.json")]
    assert "interrupted" in statuses and "running" not in statuses
