"""Memory checks see the real limit: the host's MemAvailable and this process's memory cgroups (v1
and v2, parents included), and a run over a memory cgroup's limit is refused at once with one line
that names it (tested in a real cgroup where one can be made)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mim_lightning.errors import MimError
from mim_lightning.training import memory
from mim_lightning.training.memory import cgroup_free, check_run_memory, host_available

MIM = shutil.which("mim") or os.path.join(os.path.dirname(sys.executable), "mim")
GiB = 2**30
NO_LIMIT_V1 = 9223372036854771712   # what cgroup v1 reports for "no limit"


def tree(root: Path, files: dict) -> Path:
    """Write {relative path: text} under root; return root."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_takes_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    root = tree(tmp_path / "cg", {"memory.current": "999999",                 # the root: no memory.max
                                  "a/memory.max": "1000", "a/memory.current": "400",
                                  "a/b/memory.max": "max", "a/b/memory.current": "100"})
    membership = tree(tmp_path, {"cgroup": "0::/a/b\n"}) / "cgroup"
    assert cgroup_free(root, membership) == 600
    (root / "a/b/memory.max").write_text("500\n")
    assert cgroup_free(root, membership) == 400
    (root / "a/b/memory.current").write_text("900\n")   # over its limit: nothing left
    assert cgroup_free(root, membership) == 0


def test_cgroup_v1_reads_the_memory_hierarchy(tmp_path):
    root = tree(tmp_path / "cg", {"memory/memory.limit_in_bytes": str(NO_LIMIT_V1), "memory/memory.usage_in_bytes": "10",
                                  "memory/x/memory.limit_in_bytes": "2000", "memory/x/memory.usage_in_bytes": "500",
                                  "cpu/x/cpu.shares": "1024"})
    membership = tree(tmp_path, {"cgroup": "5:cpu,cpuacct:/x\n4:memory:/x\n0::/\n"}) / "cgroup"
    assert cgroup_free(root, membership) == 1500


def test_no_cgroup_limit_is_none(tmp_path):
    root = tree(tmp_path / "cg", {"memory.max": "max", "memory.current": "5"})
    assert cgroup_free(root, tmp_path / "missing") is None
    assert cgroup_free(root, tree(tmp_path, {"cgroup": "0::/\n"}) / "cgroup") is None
    assert cgroup_free(root, tree(tmp_path, {"cgroup": "0::/gone\ngarbage\n"}) / "cgroup") is None


def test_host_available_reads_meminfo(tmp_path):
    meminfo = tree(tmp_path, {"meminfo": "MemTotal: 100 kB\nMemAvailable:    2048 kB\n"}) / "meminfo"
    assert host_available(meminfo) == 2048 * 1024
    assert host_available(tmp_path / "missing") is None


PARTS = {"data": (3 * GiB, "set data.stream=true"), "weights": (GiB, "lower model.width")}


def test_the_refusal_names_the_tightest_limit(monkeypatch):
    monkeypatch.setattr(memory, "host_available", lambda: 64 * GiB)
    monkeypatch.setattr(memory, "cgroup_free", lambda: 2 * GiB)
    with pytest.raises(MimError, match=r"4\.0 GiB on cpu but 2\.0 GiB are free under the container's memory limit "
                                       r"\(cgroup\); the largest part is data"):
        check_run_memory(PARTS, torch.device("cpu"))
    monkeypatch.setattr(memory, "host_available", lambda: GiB)
    with pytest.raises(MimError, match=r"1\.0 GiB are free under the host's available memory \(MemAvailable\)"):
        check_run_memory(PARTS, torch.device("cpu"))
    monkeypatch.setattr(memory, "cgroup_free", lambda: None)
    monkeypatch.setattr(memory, "host_available", lambda: 8 * GiB)
    check_run_memory(PARTS, torch.device("cpu"))   # fits


LIMIT = 768 * 2**20
# Stored data of about 2.0 GiB (4 bytes x (2 x 262,144 + 4,096) samples x 1,025): over the cgroup's
# 768 MiB, within the host's memory. data.stream=false, else auto would stream it to fit.
OVER_THE_LIMIT = ["data.d=1024", "data.alpha=256", "data.alpha2=256", "data.n_test=4096", "model.width=32",
                  "data.stream=false", "stage1.steps=3"]


@pytest.fixture
def memory_cgroup():
    """A new memory cgroup limited to LIMIT (cgroup v2 at /sys/fs/cgroup, else v1 at
    /sys/fs/cgroup/memory), removed afterwards; skipped where none can be made."""
    if os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root")
    base = Path("/sys/fs/cgroup")
    controllers = base / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        control = base / "cgroup.subtree_control"
        try:
            if "memory" not in control.read_text().split():
                control.write_text("+memory")
        except OSError as exc:
            pytest.skip(f"cannot enable the memory controller for children of {base} ({exc})")
        folder, limit_file = base / f"mim-test-{os.getpid()}", "memory.max"
    elif (base / "memory" / "memory.limit_in_bytes").exists():
        folder, limit_file = base / "memory" / f"mim-test-{os.getpid()}", "memory.limit_in_bytes"
    else:
        pytest.skip("no cgroup memory controller: neither cgroup v2 with memory at /sys/fs/cgroup nor v1 at /sys/fs/cgroup/memory")
    try:
        folder.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create the cgroup {folder} ({exc})")
    try:
        try:
            (folder / limit_file).write_text(str(LIMIT))
        except OSError as exc:
            pytest.skip(f"cannot set {folder / limit_file} ({exc})")
        yield folder
    finally:
        folder.rmdir()


@pytest.mark.slow
def test_a_run_over_the_cgroup_limit_is_refused_at_once(memory_cgroup, tmp_path):
    if (host_available() or 0) < 8 * GiB:
        pytest.skip("the host has under 8 GiB available: the cgroup would not be the tightest limit")
    out = tmp_path / "run"

    def enter_cgroup():
        (memory_cgroup / "cgroup.procs").write_text(str(os.getpid()))

    args = [arg for item in OVER_THE_LIMIT for arg in ("--set", item)]
    done = subprocess.run([MIM, "train", "--out", str(out), *args], preexec_fn=enter_cgroup,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("Warning: ")]
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert lines[0].startswith("Error: the run needs about") and "the largest part is data (2.0 GiB)" in lines[0], lines[0]
    assert "GiB are free under the container's memory limit (cgroup)" in lines[0], lines[0]
    assert not (out / "results.json").exists()
