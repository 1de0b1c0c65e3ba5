"""What a run will hold in memory, counted before anything is allocated.

Per rank, in bytes: the stored data (none when streamed), the network (W, its gradient and the
optimiser's copy), one chunk of a full-batch pass (its x when streamed and the activations autograd
keeps, about 6 floats per sample and neuron), the stage-1 metrics' copies of W (at most 64 MiB),
the spectral baseline (the d x d matrix and eigh's workspace when dense; the Krylov basis when
matrix-free) and the stage-2 normal equations. A run that would not fit is refused with the
largest part and the key that shrinks it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mim_lightning.core.matrix_free import DEFAULT_BLOCK, MAX_BLOCKS
from mim_lightning.errors import MimError
from mim_lightning.training.history import snapshot_slots

FLOAT, DOUBLE = 4, 8
ACTIVATION_COPIES = 6   # pre-activation, activation, their gradients, f and the loss per sample and neuron
# the dense baseline per entry of its d x d matrix: the float32 pass sum, a chunk's product and the
# scaled sum (12), the float64 copy (8), eigh's working copy and eigenvectors (16), LAPACK syevd's
# workspace of about 2 d^2 doubles (16); tests/test_scale.py measures the peak against it
DENSE_BYTES_PER_ENTRY = 3 * FLOAT + 6 * DOUBLE
KRYLOV_COLUMNS = (MAX_BLOCKS + 1) * DEFAULT_BLOCK  # the matrix-free solver's basis (restarted) and its next block


def memory_limits(device: torch.device) -> dict[str, int]:
    """Free bytes on the device under each limit that can be read, by what sets it: on a GPU the
    CUDA allocator's free memory; on the CPU the host's MemAvailable and this process's memory
    cgroups (``cgroup_free``)."""
    if device.type == "cuda":
        return {"the GPU's free memory": torch.cuda.mem_get_info(device)[0]}
    limits = {}
    host = host_available()
    if host is not None:
        limits["the host's available memory (MemAvailable)"] = host
    container = cgroup_free()
    if container is not None:
        limits["the container's memory limit (cgroup)"] = container
    return limits


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device: the least of ``memory_limits``, None if none is known."""
    limits = memory_limits(device)
    return min(limits.values()) if limits else None


def host_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The host's MemAvailable in bytes, None if unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_free(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes this process's memory cgroups still let it use: the least of limit - usage over its
    cgroup and each parent up to the mount ``root`` (cgroup v2: memory.max - memory.current under
    ``root``; v1: memory.limit_in_bytes - memory.usage_in_bytes under ``root``/memory), where
    ``membership`` (/proc/self/cgroup) names the cgroups. None when no limit is set or none can
    be read."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    free = []
    for line in lines:
        fields = line.split(":", 2)   # hierarchy id : controllers (empty on v2) : path
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            base, limit_file, usage_file = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base, limit_file, usage_file = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        folder = base / path.strip("/")
        while True:   # parents limit too: the tightest counts
            limit, usage = _read_bytes(folder / limit_file), _read_bytes(folder / usage_file)
            if limit is not None and usage is not None:
                free.append(max(limit - usage, 0))
            if folder == base:
                break
            folder = folder.parent
    return min(free) if free else None


def _read_bytes(path: Path) -> int | None:
    """The integer in a cgroup file, None when it is absent, unreadable or 'max' (no limit)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
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
        parts["the dense spectral baseline"] = (DENSE_BYTES_PER_ENTRY * K * d * d, "set baseline.spectral=matrix_free (or off)")
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
    """Refuse, with one line naming the tightest limit, a run whose parts add up to more than the
    device's free memory (``memory_limits``)."""
    limits = memory_limits(device)
    total = sum(size for size, _ in parts.values())
    if not limits:
        return
    limit, free = min(limits.items(), key=lambda item: item[1])
    if total <= free:
        return
    name, (size, advice) = max(parts.items(), key=lambda item: item[1][0])
    raise MimError(f"the run needs about {total / 2**30:.1f} GiB on {device.type} but {free / 2**30:.1f} GiB are free "
                   f"under {limit}; the largest part is {name} ({size / 2**30:.1f} GiB): {advice}")
