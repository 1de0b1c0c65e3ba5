"""What a run will hold in memory, counted before anything is allocated.

Per rank, in bytes: the stored data (none when streamed), the network (W, its gradient and the
optimiser's copy), one chunk of a full-batch pass (its x when streamed and the activations autograd
keeps, about 6 floats per sample and neuron), the stage-1 metrics' copies of W (at most 32 MiB),
the spectral baseline (the d x d matrix and eigh's workspace when dense; the Krylov basis when
matrix-free) and the stage-2 normal equations. A run that would not fit is refused with the
largest part and the key that shrinks it.
"""

from __future__ import annotations

import torch

from mim_lightning.core.matrix_free import DEFAULT_BLOCK, MAX_BLOCKS
from mim_lightning.errors import MimError
from mim_lightning.training.callbacks import snapshot_slots

FLOAT, DOUBLE = 4, 8
ACTIVATION_COPIES = 6   # pre-activation, activation, their gradients, f and the loss per sample and neuron
KRYLOV_COLUMNS = (MAX_BLOCKS + 1) * DEFAULT_BLOCK  # the matrix-free solver's basis (restarted) and its next block


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device (GPU: the CUDA allocator's view; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_memory(cfg, replicas: int, stored_bytes: int, chunk_rows: int, streamed: bool, spectral: str) -> dict:
    """{part: (bytes, advice)} of one rank; ``chunk_rows`` is the largest chunk of a pass."""
    K, d, m = replicas, cfg.data.d, cfg.model.width
    parts = {
        "data": (0 if streamed else stored_bytes,
                 "set data.stream=true (regenerate the data in every pass) or lower data.alpha, data.alpha2, data.n_test"),
        "weights": (3 * FLOAT * K * m * d, "lower model.width"),
        "a chunk of a pass": (FLOAT * K * chunk_rows * (ACTIVATION_COPIES * m + (d if streamed else 0)),
                              "set data.chunk_size (samples per chunk of a full-batch pass)"),
        "the stage-2 normal equations": (3 * DOUBLE * K * m * m, "lower model.width"),
        "the stage-1 metrics' copies of W": (snapshot_bytes(cfg, FLOAT * K * m * d),
                                             "lower metrics.flush_every_n_steps"),
    }
    if spectral == "dense":
        parts["the dense spectral baseline"] = (3 * DOUBLE * K * d * d, "set baseline.spectral=matrix_free (or off)")
    elif spectral == "matrix_free":
        shifts = 2 if cfg.baseline.uncentred and cfg.stage1.center else 1   # centred and uncentred, solved together
        parts["the matrix-free spectral baseline"] = (DOUBLE * shifts * K * d * KRYLOV_COLUMNS,
                                                      "set baseline.spectral=off (or baseline.uncentred=false)")
    return parts


def snapshot_bytes(cfg, weight_bytes: int) -> int:
    """The stage-1 metrics' buffer of W copies (``MetricHistory.record``)."""
    slots = snapshot_slots(cfg.metrics.flush_every_n_steps, weight_bytes)
    return slots * weight_bytes if slots >= 2 else 0


def check_run_memory(parts: dict, device: torch.device) -> None:
    """Refuse, with one line, a run whose parts add up to more than the device's free memory."""
    free = available_memory(device)
    total = sum(size for size, _ in parts.values())
    if free is None or total <= free:
        return
    name, (size, advice) = max(parts.items(), key=lambda item: item[1][0])
    raise MimError(f"the run needs about {total / 2**30:.1f} GiB on {device.type} but {free / 2**30:.1f} GiB are free; "
                   f"the largest part is {name} ({size / 2**30:.1f} GiB): {advice}")
