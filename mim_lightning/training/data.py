"""The LightningDataModule: seeded Gaussian multi-index data, generated on the training device.

x ~ N(0, I_d), U in R^{r x d} with orthonormal rows, y = g(U x) + noise * N(0, 1), generated in
blocks from counter-based seeds (``core.streams``); every tensor carries a leading replica
dimension K (independent seeds).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from mim_lightning.core.streams import make_split, max_local_rows, random_subspace
from mim_lightning.errors import MimError


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


def check_memory(needed: int, device: torch.device) -> None:
    """Refuse, with one line, a run whose data alone would not fit on the device."""
    free = available_memory(device)
    if free is not None and needed > free:
        raise MimError(
            f"the data needs about {needed / 2**30:.1f} GiB on {device.type} but {free / 2**30:.1f} GiB are free: "
            f"lower data.d, data.alpha, data.alpha2 or data.n_test (data.chunk_size bounds the activations, not the data)"
        )


class MultiIndexDataModule(L.LightningDataModule):
    """D1 (stage 1), D2 (stage 2) and a test set for K replicas, generated in ``setup``.

    ``split`` chooses what ``train_dataloader`` serves ("d1" or "d2"); each batch is one chunk
    (x (K, c, d), y (K, c)) of this rank's shard, already on the device.
    """

    def __init__(self, seeds, d, r, link, link_name, noise, sizes: dict, chunk_size: int = 0, split_samples: bool = True):
        super().__init__()
        self.seeds, self.d, self.r = list(seeds), d, r
        self.link, self.link_name, self.noise = link, link_name, noise
        self.sizes, self.chunk_size, self.split_samples = dict(sizes), chunk_size, split_samples
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.U = None
        self.world = 1

    def place(self, device: torch.device, rank: int = 0, world: int = 1, poll=None) -> None:
        """Generate this rank's shards on ``device`` (once); ``poll()`` runs between blocks (a stop
        request raises there, so a slow link cannot hold a signal back)."""
        if self.tensors:
            return
        self.world = world
        rows = sum(max_local_rows(n, world) for split, n in self.sizes.items() if self.split_samples or split != "d2")
        check_memory(4 * len(self.seeds) * rows * (self.d + 1), device)
        self.U = torch.stack([random_subspace(s, self.d, self.r, device) for s in self.seeds])
        for split, n in self.sizes.items():
            if split == "d2" and not self.split_samples:
                self.tensors["d2"] = self.tensors["d1"]
                continue
            self.tensors[split] = make_split(
                self.seeds, split, n, self.U, self.link, self.link_name, self.noise, rank, world, device, poll
            )

    def setup(self, stage=None):
        """Lightning's hook: on the CPU, one process (``place`` is the way in under Fabric)."""
        self.place(torch.device("cpu"))

    def n(self, split: str) -> int:
        """Global number of samples in a split (all ranks together)."""
        return self.sizes["d1" if split == "d2" and not self.split_samples else split]

    def chunks(self, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's shard of a split cut into the same number of chunks on every rank."""
        x, y = self.tensors[split]
        rows = max_local_rows(self.n(split), self.world)
        size = self.chunk_size or rows
        count = max(1, math.ceil(rows / size))
        return [(x[:, i * size:(i + 1) * size], y[:, i * size:(i + 1) * size]) for i in range(count)]
