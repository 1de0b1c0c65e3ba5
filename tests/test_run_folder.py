"""The run folder's guarantees: atomic files, a lock, stale statuses, safe checkpoints."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from mim_lightning.errors import MimError
from mim_lightning.training.checkpoints import load_checkpoint, save_checkpoint
from mim_lightning.training.run_folder import RunFolder, write_atomic


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_atomic(path, "old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    save_checkpoint(path, {"stage": "stage1", "step": 1, "W": torch.ones(2)})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(MimError, match="could not write the checkpoint .*No space left on device.*previous checkpoint is kept"):
        save_checkpoint(path, {"stage": "stage1", "step": 2, "W": torch.zeros(2)})
    monkeypatch.undo()
    assert load_checkpoint(path, 2**20)["step"] == 1


def test_the_lock_refuses_a_second_holder(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.locked():
        assert folder.in_use()
        with pytest.raises(MimError, match="in use by another mim process"):
            with RunFolder(tmp_path / "run").locked():
                pass
    assert not folder.in_use()


def test_running_without_a_live_holder_reads_as_stale(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.locked():
        folder.start({"seed": 0}, fresh=True)
        assert folder.status()["status"] == "running"
    status = folder.status()          # the holder ended without recording an outcome
    assert status["status"] == "stale" and str(os.getpid()) in status["message"]
    raw = json.loads((tmp_path / "run" / "status.json").read_text())
    assert raw["status"] == "running" and raw["pid"] == os.getpid()


def test_a_lock_held_by_another_process_is_seen(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.prepare()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mim_lightning.training.run_folder import RunFolder\n"
        f"f = RunFolder({str(tmp_path / 'run')!r})\n"
        "with f.locked():\n    print('held', flush=True); time.sleep(30)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert folder.in_use()
    finally:
        holder.kill()
        holder.wait()
    assert not folder.in_use()


def test_an_out_folder_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MimError, match="is a file, not a folder"):
        RunFolder(tmp_path / "file" / "run").prepare()
