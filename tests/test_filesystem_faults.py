"""Filesystem faults through the CLI (`mim train` and `mim sweep`, run in-process): a full disk,
a read-only file system, a file or a folder in the way, a dangling symbolic link and an over-long
name each end in one line 'Error: ...' in plain words (no traceback, no Python class name), exit
code 1 or 2, and nothing half-written (no results.json without its config.yaml, no status.json
saying 'finished' without results.json). Full and read-only disks are small tmpfs mounts (root
only; skipped where mounting is not allowed). ``errors.os_error_line``, which words them, is also
tested on its own for each kind of fault."""

import contextlib
import errno
import json
import os
import re
import subprocess

import pytest
from click.testing import CliRunner

from mim_lightning.cli import main
from mim_lightning.errors import os_error_line

ENV = {"MIM_LIGHTNING_PLUGINS": "", "MIM_SWEEP_LIMIT": "0"}
CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|Errno")
TINY_YAML = "data: {d: 32, alpha: 8, alpha2: 8, n_test: 512}\nmodel: {width: 32}\nstage1: {steps: 3}\n"
SWEEP_YAML = TINY_YAML + "sweep: {seed: [0, 1]}\n"


def mim(*args, cwd) -> subprocess.CompletedProcess:
    """The CLI run in this process (no second import of torch and Lightning), as a finished process."""
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(main, [*map(str, args)], env=ENV)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def check_fault(done: subprocess.CompletedProcess, root, sweep: bool = False) -> str:
    """One 'Error: ' line (the last on stderr; a sweep may print its run count and progress
    before it), exit 1 or 2, no traceback or class name, and no half-written run under ``root``."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode in (1, 2), done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    assert sweep or len(lines) == 1, done.stderr
    assert not CLASS_NAME.search(errors[0].removeprefix("Error: ")), errors[0]
    for results in root.rglob("results.json"):
        if results.is_file():
            assert (results.parent / "config.yaml").is_file(), results
    for status in root.rglob("status.json"):
        if json.loads(status.read_text()).get("status") == "finished":
            assert (status.parent / "results.json").is_file(), status
    return errors[0]


@pytest.fixture
def mount(tmp_path):
    """mount(name, size, read_only=False): a fresh tmpfs at tmp_path/name, unmounted afterwards."""
    points = []

    def mount_one(name, size="64k", read_only=False):
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        points.append(point)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield mount_one
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=True)


def filled(point, room_kib: int):
    """Fill the tmpfs at ``point`` until only about ``room_kib`` KiB are left."""
    with open(point / "filler", "wb") as handle:
        try:
            while os.statvfs(point).f_bavail * os.statvfs(point).f_frsize > room_kib * 1024:
                handle.write(b"\0" * 1024)
                handle.flush()
        except OSError:  # full
            pass
    return point


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    (tmp_path / "sweep.yaml").write_text(SWEEP_YAML)
    return tmp_path


def sweep_or_train(command, root, out):
    args = ["sweep", "sweep.yaml"] if command == "sweep" else ["train", "tiny.yaml"]
    return check_fault(mim(*args, "--out", out, cwd=root), root, sweep=command == "sweep")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_full_disk(files, mount, command):
    line = sweep_or_train(command, files, filled(mount("disk"), 0) / "out")
    assert "disk is full" in line and "free disk space" in line and "disk/out" in line


@pytest.mark.slow
def test_a_disk_that_fills_during_the_run(files, mount):
    """Room for the folder and config.yaml, not for the whole run: the error is the disk's, and the
    run is not recorded as finished."""
    line = sweep_or_train("train", files, filled(mount("disk"), 12) / "out")
    assert "No space left on device" in line or "disk is full" in line


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_read_only_folder(files, mount, command):
    line = sweep_or_train(command, files, mount("readonly", read_only=True))
    assert "read-only file system" in line and "readonly" in line


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_file_in_the_way_of_out(files, command):
    (files / "afile").write_text("not a folder\n")
    line = sweep_or_train(command, files, "afile/out")
    assert "afile" in line


@pytest.mark.slow
def test_a_folder_where_the_lock_file_should_be(files):
    (files / "out" / ".lock").mkdir(parents=True)
    line = sweep_or_train("train", files, "out")
    assert ".lock" in line and "folder" in line


@pytest.mark.slow
def test_a_folder_where_results_json_should_be_in_a_run_folder(files):
    """An earlier run's folder (config.yaml, status.json) whose results.json is a folder."""
    out = files / "out"
    (out / "results.json").mkdir(parents=True)
    (out / "config.yaml").write_text(TINY_YAML)
    (out / "status.json").write_text(json.dumps({"status": "failed", "message": "earlier"}))
    assert "results.json" in sweep_or_train("train", files, "out")


@pytest.mark.slow
def test_a_folder_where_results_json_should_be_in_a_sweep(files):
    """A sweep run that failed before (not final: trained again), whose results.json is a folder."""
    done = mim("sweep", "sweep.yaml", "--out", "out", cwd=files)
    assert done.returncode == 0, done.stderr
    run = sorted((files / "out" / "runs").iterdir())[0]
    (run / "results.json").unlink()
    (run / "results.json").mkdir()
    (run / "status.json").write_text(json.dumps({"status": "failed", "message": "earlier"}))
    line = sweep_or_train("sweep", files, "out")
    assert "results.json" in line and "folder" in line


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_dangling_symbolic_link_as_out(files, command):
    (files / "link").symlink_to(files / "nowhere" / "out")
    assert "link" in sweep_or_train(command, files, "link")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_over_long_out(files, command):
    line = sweep_or_train(command, files, files / ("a" * 300))
    assert "300" in line and "shorter path" in line
    assert len(line) < 300


FAULTS = [  # (errno, what the line says, what to do)
    (errno.ENOSPC, "the disk is full", "free disk space"),
    (errno.EDQUOT, "the disk is full", "free disk space"),
    (errno.EROFS, "read-only file system", "writable disk"),
    (errno.EISDIR, "it is a folder where mim needs a file", "remove or rename that folder"),
    (errno.EACCES, "permission denied", "write access"),
    (errno.EPERM, "permission denied", "write access"),
    (errno.ENOENT, "no such file or folder", "check the path"),
    (errno.EIO, "input/output error", "mim --debug"),
]


@pytest.mark.parametrize("code, what, todo", FAULTS)
def test_each_os_error_in_plain_words(code, what, todo):
    line = os_error_line(OSError(code, os.strerror(code), "runs/x/status.json"))
    assert line.startswith("'runs/x/status.json': ") and what in line and todo in line
    assert not CLASS_NAME.search(line) and str(code) not in line
    assert os_error_line(OSError(code, os.strerror(code)), "runs/x").startswith("'runs/x': ")
    assert what in os_error_line(OSError(code, os.strerror(code)))


def test_what_is_in_the_way_is_named(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    line = os_error_line(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "afile" / "out" / ".lock")))
    assert f"{str(tmp_path / 'afile')!r} is a file where a folder should be" in line
    line = os_error_line(FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "afile")))
    assert "it is a file where a folder should be" in line
    line = os_error_line(FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "link")))
    assert f"it is a symbolic link to {str(tmp_path / 'nowhere')!r}, which does not exist" in line
    line = os_error_line(FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "link" / ".lock")))
    assert f"{str(tmp_path / 'link')!r} is a symbolic link" in line
    line = os_error_line(OSError(errno.ENAMETOOLONG, "File name too long", str(tmp_path / ("b" * 300) / "c")))
    assert "a name in it is 300 bytes long" in line and "choose a shorter path" in line and len(line) < 200
