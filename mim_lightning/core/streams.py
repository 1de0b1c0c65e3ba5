"""Seeded random streams and Gaussian multi-index data blocks (no Lightning).

x ~ N(0, I_d), U in R^{r x d} with orthonormal rows, y = g(U x) + noise * N(0, 1).
Samples are generated in fixed blocks of ``BLOCK`` rows, each from its own seed
(seed, split, block); rank k of W takes blocks k, k + W, ... so the union of the shards is the
same dataset whatever the number of ranks, and the chunking of a full-batch pass (memory) never
changes the data. Every tensor carries a leading replica dimension K (independent seeds).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from mim_lightning.core.contracts import link_values
from mim_lightning.errors import MimError

BLOCK = 1024
STREAMS = {"U": 0, "d1": 1, "d2": 2, "test": 3, "init": 4, "bias": 5}  # the random streams of a seed: U, the three splits, init, biases
_MASK = (1 << 63) - 1


def stream_seed(seed: int, stream: str, index: int = 0) -> int:
    """A 63-bit seed for one random stream (seed, stream, index), by a splitmix-style mix."""
    h = (seed + 1) * 0x9E3779B97F4A7C15 + (STREAMS[stream] + 1) * 0xBF58476D1CE4E5B9 + (index + 1) * 0x94D049BB133111EB
    h &= _MASK
    h ^= h >> 31
    return (h * 0xD6E8FEB86659FD93) & _MASK


def generator(seed: int, stream: str, device: torch.device, index: int = 0) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, stream, index))
    return g


def random_subspace(seed: int, d: int, r: int, device) -> torch.Tensor:
    """U (r, d) with orthonormal rows, uniformly distributed (QR of a Gaussian with sign fix)."""
    g = generator(seed, "U", device)
    gauss = torch.randn(d, r, generator=g, device=device, dtype=torch.float64)
    q, rr = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(rr)).unsqueeze(0)
    return q.T.to(torch.float32).contiguous()


def local_blocks(n: int, rank: int, world: int) -> list[tuple[int, int]]:
    """(block index, rows) of the blocks of an n-sample split that this rank owns."""
    blocks = [(b, min(BLOCK, n - b * BLOCK)) for b in range(math.ceil(n / BLOCK))]
    return blocks[rank::world]


def max_local_rows(n: int, world: int) -> int:
    """The largest shard over ranks (every rank iterates the same number of chunks)."""
    return max(sum(rows for _, rows in local_blocks(n, k, world)) for k in range(world))


def labels(link: Callable, z: torch.Tensor, link_name: str) -> torch.Tensor:
    """g(z) for z (..., n, r), checked to be finite and of shape (..., n) (``core.contracts``: the
    same sentence as the probe and ``mim check``)."""
    return link_values(link_name, link, z).to(z.dtype)


def make_blocks(seeds, split, blocks, U, link, link_name, noise, device, poll=None):
    """The samples of ``blocks`` ((block index, rows) pairs) of a split for every replica:
    x (K, rows, d), y (K, rows). Block b of replica k is drawn from its own seed (seed_k, split, b),
    so any subset of blocks is generated alone with the same numbers; each block is drawn straight
    into its rows of x (no intermediate copies). ``poll()`` runs after each block."""
    K, d = len(seeds), U.shape[-1]
    total = sum(rows for _, rows in blocks)
    x = torch.empty(K, total, d, device=device)
    y = torch.empty(K, total, device=device)
    for k, seed in enumerate(seeds):
        start = 0
        for block, rows in blocks:
            g = generator(seed, split, device, block)
            part = x[k, start:start + rows]
            torch.randn(rows, d, generator=g, device=device, out=part)
            eps = torch.randn(rows, generator=g, device=device)
            y[k, start:start + rows] = labels(link, part @ U[k].T, link_name) + noise * eps
            start += rows
            if poll is not None:
                poll()
    return x, y


def check_labels(y: torch.Tensor, link_name: str, split: str) -> None:
    """Refuse non-finite labels (one host synchronisation)."""
    if not bool(torch.isfinite(y).all()):
        raise MimError(f"link {link_name!r} produced non-finite labels on {split}; a link must return finite values")


def make_split(seeds, split, n, U, link, link_name, noise, rank, world, device, poll=None):
    """This rank's shard of a split: x (K, n_local, d), y (K, n_local); ``poll()``, if given, runs
    after every block."""
    x, y = make_blocks(seeds, split, local_blocks(n, rank, world), U, link, link_name, noise, device, poll)
    check_labels(y, link_name, split)
    return x, y
