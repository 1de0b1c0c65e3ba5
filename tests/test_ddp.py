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


@pytest.mark.parametrize("extra", [
    [],                                                                   # ridge stage 2
    ["stage2.loss=huber", "stage2.solver=gd", "stage2.steps=20", "data.chunk_size=300"],
])
def test_two_processes_equal_one(tmp_path, extra):
    sets = [arg for item in [*TINY, "data.alpha=40", "data.alpha2=40", *extra] for arg in ("--set", item)]
    one = train(tmp_path / "one", *sets)
    two = train(tmp_path / "two", *sets, "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu")
    for key in KEYS:
        for a, b in zip(as_list(one[key]), as_list(two[key])):
            assert abs(a - b) < 1e-4, (key, a, b)
