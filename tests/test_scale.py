"""Scale: streamed data never materialise n x d, and the matrix-free baseline equals the dense one."""

import json
import subprocess
import sys

import pytest
import torch

from mim_lightning.core.streams import random_subspace
from mim_lightning.core.spectral import matrix_free_cosines, spectral_cosines
from mim_lightning.plugins.builtins.links import sum_he2, z1z2
from mim_lightning.plugins.builtins.losses import huber

from helpers import tiny_config

# The peak resident memory of this process image: VmHWM starts afresh at exec (ru_maxrss would
# carry over the forking pytest process's own high-water mark).
PEAK = """
import sys
from mim_lightning.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    sys.stderr.write(f"PEAK {int(hwm.split()[1]) * 1024}\\n")
"""


@pytest.mark.slow
def test_a_streamed_run_holds_far_less_than_its_data(tmp_path):
    """d = 4096, n1 = 16 d: D1 alone would take 1 GiB stored; the whole streamed run (torch and
    Lightning included, ~0.35 GiB of it) peaks below half of that."""
    sets = ["data.d=4096", "data.alpha=16", "data.alpha2=1", "data.n_test=1024", "model.width=16", "stage1.steps=2",
            "data.stream=true", "data.chunk_size=2048", "baseline.spectral=off"]
    done = subprocess.run([sys.executable, "-c", PEAK, "train", "--out", str(tmp_path),
                           *[arg for item in sets for arg in ("--set", item)]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    peak = int(done.stderr.split("PEAK ")[-1])
    stored_d1 = 4 * 16 * 4096 * 4097
    assert peak < 0.5 * stored_d1, (peak / 2**20, stored_d1 / 2**20)
    assert json.loads((tmp_path / "results.json").read_text())["principal_cosines"]


@pytest.mark.parametrize("extra", [["data.chunk_size=2048"], ["data.chunk_size=0"]])
def test_stored_and_streamed_runs_give_the_same_numbers(tmp_path, extra):
    from mim_lightning.training.run import train

    runs = [train(tiny_config("data.alpha=80", "data.n_test=3000", f"data.stream={mode}", *extra), tmp_path / mode)
            for mode in ("false", "true")]
    for key in ("principal_cosines", "subspace_mass", "test_rel_mse", "spectral_principal_cosines", "stage2_loss"):
        assert runs[1][key] == pytest.approx(runs[0][key], abs=1e-6), key


@pytest.mark.parametrize("link, order", [(sum_he2, ("magnitude", "largest")), (z1z2, ("magnitude", "smallest"))])
def test_matrix_free_baseline_equals_the_dense_one(link, order):
    """Same data, preprocessing and shift: principal cosines within 1e-4 (K = 2 replicas, two
    shifts from the same passes)."""
    torch.manual_seed(0)
    K, d, n = 2, 256, 1024
    U = torch.stack([random_subspace(s, d, 2, "cpu") for s in (1, 2)])
    x = torch.randn(K, n, d)
    y = link(torch.einsum("knd,krd->knr", x, U))
    chunks = [(x[:, i:i + 300], y[:, i:i + 300]) for i in range(0, n, 300)]
    shifts = [torch.tensor([0.1, -0.2]), torch.zeros(2)]    # centred and uncentred, solved together
    free = matrix_free_cosines(lambda: chunks, huber, shifts, n, U, lambda t: t, order)
    assert len(free) == 2
    for shift, found in zip(shifts, free, strict=True):
        dense = spectral_cosines(chunks, huber, shift, n, U, lambda t: t, order)
        for name in order:
            assert torch.allclose(found[name], dense[name], atol=1e-4), name


PEAK_WITH_BASELINE = """
import sys, tempfile
from pathlib import Path
import torch
from mim_lightning.config import load_config
from mim_lightning.training.run import train
torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as out:
    train(load_config(None, sys.argv[1:]), Path(out))
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) * 1024)
"""


@pytest.mark.slow
def test_the_memory_model_of_the_dense_baseline_matches_a_measured_peak():
    """The peak resident memory of a run with the dense baseline, less that of the same run without
    it, is what the memory check counts for the baseline: at most 5% more, at least 70% of it."""
    from mim_lightning.training.memory import run_memory

    sets = ["data.d=1024", "data.alpha=1", "data.alpha2=1", "data.n_test=64", "model.width=8", "stage1.steps=2"]
    peaks = {}
    for method in ("dense", "off"):
        done = subprocess.run([sys.executable, "-c", PEAK_WITH_BASELINE, *sets, f"baseline.spectral={method}"], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[method] = int(done.stdout.split()[-1])
    modelled = run_memory(tiny_config(*sets), 1, 0, 1024, False, "dense")["the dense spectral baseline"][0]
    measured = peaks["dense"] - peaks["off"]
    assert 0.7 * modelled <= measured <= 1.05 * modelled, (measured / 2**20, modelled / 2**20)
    cfg = tiny_config("data.d=65536", "data.alpha=1", "data.alpha2=1", "model.width=4")
    assert "baseline.spectral=matrix_free" in run_memory(cfg, 1, 0, 1024, True, "dense")["the dense spectral baseline"][1]
    assert "the dense spectral baseline" not in run_memory(cfg, 1, 0, 1024, True, "matrix_free")


def test_streamed_chunks_on_a_gpu_are_sized_by_its_total_memory(monkeypatch):
    """A few large chunks per pass on a big GPU, bounded both ways; the CPU keeps 32 MiB chunks."""
    import types

    from mim_lightning.training import data

    for total, want in ((141 * 2**30, 141 * 2**30 // 32), (4 * 2**30, 256 * 2**20), (2**40, 8 * 2**30)):
        monkeypatch.setattr(data.torch.cuda, "get_device_properties", lambda device, t=total: types.SimpleNamespace(total_memory=t))
        assert data.stream_chunk_bytes(torch.device("cuda")) == want
    assert data.stream_chunk_bytes(torch.device("cpu")) == 32 * 2**20
