"""Counting what a run dispatches to torch, for the claims that a stage-1 step launches few kernels
and never waits for the device: a ``TorchDispatchMode`` that counts every aten op by name. The same
code runs on every device, so counts taken on the CPU are what a GPU would run."""

from __future__ import annotations

import collections

from torch.utils._python_dispatch import TorchDispatchMode

HOST_READ = "_local_scalar_dense"   # every .item(), float() or bool() of a tensor: a GPU synchronisation
EIGENSOLVERS = frozenset({"_linalg_eigh", "linalg_eigh", "_linalg_svd", "linalg_svd", "svd", "linalg_eigvalsh",
                          "linalg_eig", "_linalg_eigvals"})


class CountOps(TorchDispatchMode):
    """Counts every aten op dispatched while active, by name (``ops``)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def per_step(short: collections.Counter, long: collections.Counter, steps: int) -> dict:
    """{'ops', 'host_reads', 'eigensolver_calls'} per step from the counts of two whole runs that
    differ only in ``steps`` more stage-1 steps (flushes included; everything else cancels)."""
    extra = {name: long[name] - short[name] for name in long}
    return {"ops": sum(extra.values()) / steps, "host_reads": extra.get(HOST_READ, 0) / steps,
            "eigensolver_calls": sum(extra.get(name, 0) for name in EIGENSOLVERS) / steps}
