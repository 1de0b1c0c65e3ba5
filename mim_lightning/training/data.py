"""The LightningDataModule: seeded Gaussian multi-index data, generated on the training device.

x ~ N(0, I_d), U in R^{r x d} with orthonormal rows, y = g(U x) + noise * N(0, 1), generated in
blocks from counter-based seeds (``core.streams``); every tensor carries a leading replica
dimension K (independent seeds).
"""

from __future__ import annotations

import math

import mim_lightning.training.lean_imports  # noqa: F401  (before Lightning: no unused metric back-ends)
import lightning as L
import torch

from mim_lightning.core.streams import BLOCK, check_labels, local_blocks, make_blocks, make_split, max_local_rows, random_subspace
from mim_lightning.training.memory import available_memory

#: a streamed chunk's x when data.chunk_size is 0 (at least one block): small on the CPU (a pass
#: holds about two chunks, the one in use and the next; the matmuls run as fast); on a GPU
#: GPU_CHUNK_SHARE of its total memory within GPU_CHUNK_BYTES (a few large chunks per pass, few
#: launches). The total, not the free memory, so that a run's chunks, and so its last digits, are
#: the same every time on the same device.
CPU_CHUNK_BYTES = 32 * 2**20
GPU_CHUNK_SHARE = 1 / 32
GPU_CHUNK_BYTES = (256 * 2**20, 8 * 2**30)


def stream_chunk_bytes(device: torch.device) -> int:
    """The bytes of x in a streamed chunk by default on ``device``."""
    if device.type != "cuda":
        return CPU_CHUNK_BYTES
    low, high = GPU_CHUNK_BYTES
    return int(min(max(torch.cuda.get_device_properties(device).total_memory * GPU_CHUNK_SHARE, low), high))


class MultiIndexDataModule(L.LightningDataModule):
    """D1 (stage 1), D2 (stage 2) and a test set for K replicas, on the training device.

    Stored (``stream`` false): each split's shard is generated once in ``place``. Streamed
    (``stream`` true, or "auto" when the stored data would take more than half of the free
    memory): nothing of size n x d is kept; every pass regenerates its chunks from the seeds, with
    the same numbers. ``chunks(split)`` yields this rank's shard as chunks (x (K, c, d), y (K, c)),
    the same number on every rank.
    """

    def __init__(self, seeds, d, r, link, link_name, noise, sizes: dict, chunk_size: int = 0, split_samples: bool = True,
                 stream: bool | str = False):
        super().__init__()
        self.seeds, self.d, self.r = list(seeds), d, r
        self.link, self.link_name, self.noise = link, link_name, noise
        self.sizes, self.chunk_size, self.split_samples = dict(sizes), chunk_size, split_samples
        self.stream = stream
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.U = None
        self.device, self.rank, self.world, self.streamed = torch.device("cpu"), 0, 1, False
        self.checked: set[str] = set()

    def stored_bytes(self, world: int) -> int:
        """Bytes of this rank's stored data (x and y in float32, all splits, all replicas)."""
        rows = sum(max_local_rows(n, world) for split, n in self.sizes.items() if self.split_samples or split != "d2")
        return 4 * len(self.seeds) * rows * (self.d + 1)

    def choose(self, device: torch.device, rank: int = 0, world: int = 1) -> None:
        """Fix the device and this rank's shard, and choose stored or streamed."""
        self.device, self.rank, self.world = torch.device(device), rank, world
        free = available_memory(self.device)
        self.streamed = self.stream is True or (self.stream == "auto" and free is not None
                                                and self.stored_bytes(world) > free // 2)

    def largest_chunk(self) -> int:
        """Rows of the largest chunk of any pass."""
        rows = max(max_local_rows(n, self.world) for n in self.sizes.values())
        if self.streamed:
            return min(rows, self.blocks_per_chunk() * BLOCK)
        return min(rows, self.chunk_size or rows)

    def place(self, device: torch.device | None = None, rank: int = 0, world: int = 1, poll=None) -> None:
        """Draw U and, when stored, generate this rank's shards (once; ``choose`` first, unless
        ``device`` is given); ``poll()`` runs between blocks (a stop request raises there, so a
        slow link cannot hold a signal back)."""
        if self.U is not None:
            return
        if device is not None:
            self.choose(device, rank, world)
        rank, world = self.rank, self.world
        self.U = torch.stack([random_subspace(s, self.d, self.r, self.device) for s in self.seeds])
        if self.streamed:
            return
        for split, n in self.sizes.items():
            if split == "d2" and not self.split_samples:
                self.tensors["d2"] = self.tensors["d1"]
                continue
            self.tensors[split] = make_split(self.seeds, split, n, self.U, self.link, self.link_name, self.noise,
                                             rank, world, self.device, poll)

    def setup(self, stage=None):
        """Lightning's hook: on the CPU, one process (``place`` is the way in under Fabric)."""
        self.place(torch.device("cpu"))

    def source(self, split: str) -> str:
        """The split whose samples ``split`` uses (D2 is D1 without sample splitting)."""
        return "d1" if split == "d2" and not self.split_samples else split

    def n(self, split: str) -> int:
        """Global number of samples in a split (all ranks together)."""
        return self.sizes[self.source(split)]

    def chunks(self, split: str):
        """This rank's shard of a split as chunks, the same number on every rank (a rank with
        fewer rows gets empty chunks at the end)."""
        rows = max_local_rows(self.n(split), self.world)
        if not self.streamed:
            x, y = self.tensors[split]
            size = self.chunk_size or rows
            count = max(1, math.ceil(rows / size))
            return [(x[:, i * size:(i + 1) * size], y[:, i * size:(i + 1) * size]) for i in range(count)]
        return self.streamed_chunks(self.source(split))

    def blocks_per_chunk(self) -> int:
        """Blocks per streamed chunk: ``chunk_size`` rounded down to whole blocks, or by default as
        many as keep a chunk's x (K rows x d floats) within ``stream_chunk_bytes``; at least one."""
        budget = stream_chunk_bytes(self.device)
        rows = self.chunk_size or budget // (4 * len(self.seeds) * self.d)
        return max(1, rows // BLOCK)

    def streamed_chunks(self, split: str):
        """Chunks of whole blocks (``blocks_per_chunk``),
        generated on the fly; labels are checked for finiteness in the first pass only."""
        per_chunk = self.blocks_per_chunk()
        blocks = local_blocks(self.n(split), self.rank, self.world)
        count = max(1, math.ceil(max_local_rows(self.n(split), self.world) / BLOCK / per_chunk))
        for i in range(count):
            group = blocks[i * per_chunk:(i + 1) * per_chunk]
            x, y = make_blocks(self.seeds, split, group, self.U, self.link, self.link_name, self.noise, self.device)
            if split not in self.checked:
                check_labels(y, self.link_name, split)
            yield x, y
        self.checked.add(split)
