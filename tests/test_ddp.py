"""DDP on CPU (gloo): 2 processes run the same full-batch maths as 1 (issue: exact DDP)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import TINY

MIM = shutil.which("mim") or os.path.join(os.path.dirname(sys.executable), "mim")
KEYS = ("principal_cosines", "subspace_mass", "test_rel_mse", "spectral_principal_cosines", "stage2_loss")


def train(out, *args):
    cmd = [MIM, "train", "--out", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "results.json").read_text())


def as_list(value):
    return value if isinstance(value, list) else [value]


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("devices, extra", [
    (2, []),                                                                   # ridge stage 2
    (2, ["stage2.loss=huber", "stage2.solver=gd", "stage2.steps=20", "data.chunk_size=300"]),
    (3, ["data.chunk_size=300"]),             # a world size that divides neither the blocks nor the chunks
])
def test_processes_equal_one(tmp_path, devices, extra):
    sets = [arg for item in [*TINY, "data.alpha=40", "data.alpha2=40", *extra] for arg in ("--set", item)]
    one = train(tmp_path / "one", *sets)
    many = train(tmp_path / "many", *sets, "--devices", str(devices), "--strategy", "ddp", "--accelerator", "cpu")
    for key in KEYS:
        for a, b in zip(as_list(one[key]), as_list(many[key]), strict=True):
            assert abs(a - b) < 1e-5, (key, a, b)


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_local_nodes_with_torchrun_equal_one_process(tmp_path):
    """Two 'nodes' of one process each, launched by torchrun on this machine (Lightning reads the
    torchelastic environment), compute what one process computes."""
    sets = [arg for item in [*TINY, "data.alpha=40", "data.alpha2=40"] for arg in ("--set", item)]
    one = train(tmp_path / "one", *sets)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    port = str(free_port())
    nodes = [subprocess.Popen(
        [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
         "--master-port", port, "--no-python", MIM, "train", "--out", str(tmp_path / "two"), "--num-nodes", "2",
         "--devices", "1", "--strategy", "ddp", "--accelerator", "cpu", *sets],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    for node in nodes:
        output, _ = node.communicate(timeout=300)
        assert node.returncode == 0, output
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for key in KEYS:
        for a, b in zip(as_list(one[key]), as_list(two[key]), strict=True):
            assert abs(a - b) < 1e-4, (key, a, b)


def test_sweep_under_ddp_equals_one_process(tmp_path):
    import csv

    import yaml

    base = {"data": {"d": 32, "r": 2, "link": "sum_he2", "n_test": 512, "alpha2": 40}, "model": {"width": 32},
            "stage1": {"steps": 3}, "sweep": {"data.alpha": [40, 80], "seed": [0, 1]}}
    tables = []
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        path = tmp_path / f"sweep{devices}.yaml"
        path.write_text(yaml.safe_dump({**base, "trainer": {"devices": devices, "strategy": strategy}}))
        done = subprocess.run([MIM, "sweep", str(path), "--out", str(tmp_path / f"out{devices}")],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        with open(tmp_path / f"out{devices}" / "results.csv", newline="") as handle:
            tables.append(list(csv.DictReader(handle)))
    for one, two in zip(*tables, strict=True):
        for key in ("min_principal_cosine", "subspace_mass", "test_rel_mse", "spectral_min_principal_cosine"):
            assert abs(float(one[key]) - float(two[key])) < 1e-4, (key, one[key], two[key])
