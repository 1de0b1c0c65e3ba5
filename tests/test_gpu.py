"""GPU path (skipped without CUDA, as on CI): the same run on the GPU as on the CPU, data made on
the device, DDP over every GPU."""

import json
import shutil
import subprocess

import pytest
import torch

from helpers import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MIM = shutil.which("mim")
KEYS = ("principal_cosines", "subspace_mass", "test_rel_mse", "spectral_principal_cosines")


def train(out, *args):
    sets = [arg for item in [*TINY, "data.alpha=40", "data.alpha2=40"] for arg in ("--set", item)]
    done = subprocess.run([MIM, "train", "--out", str(out), *sets, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "results.json").read_text())


def test_gpu_run_recovers_like_the_cpu_run(tmp_path):
    """The GPU draws its own random numbers (a CUDA generator), so the data differ from the CPU's:
    compare the outcome, not the digits."""
    cpu = train(tmp_path / "cpu")
    gpu = train(tmp_path / "gpu", "--accelerator", "gpu", "--devices", "1")
    assert min(gpu["principal_cosines"]) > min(cpu["principal_cosines"]) - 0.1
    assert abs(gpu["test_rel_mse"] - cpu["test_rel_mse"]) < 0.15


def test_gpu_run_is_deterministic(tmp_path):
    first = train(tmp_path / "a", "--accelerator", "gpu", "--devices", "1")
    second = train(tmp_path / "b", "--accelerator", "gpu", "--devices", "1")
    for key in KEYS:
        assert first[key] == pytest.approx(second[key], abs=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_over_every_gpu_equals_one_gpu(tmp_path):
    one = train(tmp_path / "one", "--accelerator", "gpu", "--devices", "1")
    every = train(tmp_path / "all", "--accelerator", "gpu", "--devices", "-1", "--strategy", "ddp")
    for key in KEYS:
        assert every[key] == pytest.approx(one[key], abs=1e-4)


def test_streamed_gpu_run_equals_the_stored_one(tmp_path):
    stored = train(tmp_path / "stored", "--accelerator", "gpu", "--devices", "1", "--set", "data.stream=false")
    streamed = train(tmp_path / "streamed", "--accelerator", "gpu", "--devices", "1", "--set", "data.stream=true",
                     "--set", "baseline.spectral=matrix_free")
    for key in KEYS:
        assert streamed[key] == pytest.approx(stored[key], abs=1e-4)
