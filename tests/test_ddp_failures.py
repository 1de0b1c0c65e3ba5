"""DDP failures in words: when a rank is signalled or dies, every process ends within seconds, rank 0
exits (not SIGKILLed by Lightning's child-process observer) with one line naming the rank and the
cause, and status.json says interrupted or failed, never running."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mim_lightning.errors import MimError
from mim_lightning.training.ranks import RankStopped, RankWatch, child_error
from test_ddp import MIM

BASE = ["data.d=32", "data.alpha=8", "data.alpha2=8", "model.width=32", "stage1.steps=2000", "checkpoint.every_n_steps=2"]


def start(out, *sets):
    args = [arg for item in [*BASE, *sets] for arg in ("--set", item)]
    return subprocess.Popen([MIM, "train", "--out", str(out), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(pid):
    return [int(p) for task in Path(f"/proc/{pid}/task").glob("*/children") for p in task.read_text().split()]


def wait_for(ready, process, timeout=120):
    deadline = time.time() + timeout
    while not (ready() and children(process.pid)):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the run never got there"
        time.sleep(0.02)
    return children(process.pid)[0]


def alive(pid):
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def ended_in_words(process, child, out, timeout=10):
    """Every process gone within ``timeout`` s; rank 0 exited by itself, its one line on stderr
    (returned) names rank 1."""
    deadline = time.time() + timeout
    _, stderr = process.communicate(timeout=timeout)
    while alive(child):
        assert time.time() < deadline, "rank 1 still runs"
        time.sleep(0.05)
    assert process.returncode not in (0, -signal.SIGKILL, 137), (process.returncode, stderr)
    assert "Traceback" not in stderr and "Connection" not in stderr and "gloo" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"rank 1 (pid {child})" in lines[0], stderr
    return lines[0], json.loads((out / "status.json").read_text())


@pytest.mark.slow
def test_sigterm_to_rank_1_during_data_generation(tmp_path):
    process = start(tmp_path, "data.n_test=2000000")   # a few seconds of data generation per rank
    child = wait_for(lambda: list(tmp_path.glob("tensorboard/events*")), process)   # both ranks past set-up
    os.kill(child, signal.SIGTERM)
    line, status = ended_in_words(process, child, tmp_path)
    assert process.returncode == 143
    assert "stopped on SIGTERM" in line
    assert status == {"status": "interrupted", "message": f"rank 1 (pid {child}) stopped on SIGTERM"}


@pytest.mark.slow
def test_sigkill_to_rank_1_mid_stage_1(tmp_path):
    process = start(tmp_path, "data.n_test=512")
    child = wait_for((tmp_path / "checkpoints" / "last.ckpt").exists, process)
    os.kill(child, signal.SIGKILL)
    line, status = ended_in_words(process, child, tmp_path)
    assert "killed by SIGKILL" in line and "Resume with: mim train --resume" in line
    assert status["status"] == "interrupted" and "killed by SIGKILL" in status["message"]


class Finished:
    """A child process that has ended with ``returncode``."""

    def __init__(self, returncode):
        self.pid, self.returncode = 4242, returncode

    def poll(self):
        return self.returncode

    def wait(self):
        return self.returncode


@pytest.mark.parametrize("code, kind, words", [
    (-signal.SIGKILL, RankStopped, "rank 1 (pid 4242) was killed by SIGKILL"),
    (143, RankStopped, "rank 1 (pid 4242) stopped on SIGTERM"),
    (1, MimError, "rank 1 (pid 4242) exited with code 1"),
])
def test_rank_0_names_the_child_and_its_cause(code, kind, words):
    """A signal means interrupted (RankStopped is an Interrupted), any other code failed (MimError)."""
    with pytest.raises(kind, match=words.replace("(", r"\(").replace(")", r"\)")):
        RankWatch(0, 2, stop=None, children=[Finished(code)]).explain(RuntimeError("Connection reset by peer"))


def test_a_lost_connection_on_rank_1_is_one_line():
    error = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1")
    with pytest.raises(MimError, match="^rank 1: another rank stopped or died .*; see rank 0's message$"):
        RankWatch(1, 2, stop=None, children=[]).explain(error)
    RankWatch(1, 2, stop=None, children=[]).explain(ValueError("a bug"))    # anything else stands
