"""The lean full-batch loop on Lightning Fabric, the Fabric of a run and the clock of its timings.

Why Fabric and not the Trainer: a step here is one pass over the data, and at small d the
Trainer's fixed cost per step (epoch or batch hooks, loop bookkeeping) is as large as the step
itself (``scripts/loop_prototype.py``: 2.0-2.3x a hand-written loop at d = 64, against 1.13x for
Fabric). Fabric keeps what Lightning is for (accelerators, DDP and other strategies, precision,
launching, loggers) and the stage LightningModules; the loop is this file's dozen lines.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import mim_lightning.training.lean_imports  # noqa: F401  (before Lightning: no unused metric back-ends)
import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException

from mim_lightning.config import Config
from mim_lightning.errors import MimError

CLUSTER_VARIABLES = ("MASTER_ADDR", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "WORLD_SIZE")


def make_fabric(cfg: Config) -> L.Fabric:
    """The run's Fabric; bad trainer.* values become one-line MimErrors. It holds no loggers or
    callbacks: a run writes TensorBoard through ``training.tensorboard`` and ``fit_stage`` calls
    its callbacks itself."""
    t = cfg.trainer
    if t.num_nodes > 1 and not any(os.environ.get(v) for v in CLUSTER_VARIABLES):
        raise MimError(f"trainer.num_nodes = {t.num_nodes} needs a multi-node launcher: start every node with torchrun "
                       f"(--nnodes, --node-rank, --master-addr) or srun under SLURM, which set MASTER_ADDR / WORLD_SIZE "
                       f"or SLURM_NTASKS; none is set here")
    torch.set_float32_matmul_precision(t.matmul_precision)
    # an salloc shell (a SLURM allocation, no srun task): a run there is a laptop's, not a SLURM task
    salloc = "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" not in os.environ
    try:
        return L.Fabric(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                        precision=t.precision, plugins=[LightningEnvironment()] if salloc else None)
    except (MisconfigurationException, ValueError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MimError(f"trainer settings (accelerator={t.accelerator!r}, devices={t.devices!r}, "
                       f"strategy={t.strategy!r}, precision={t.precision!r}): {first}") from None


@runtime_checkable
class StageModule(Protocol):
    """What the loop, the callbacks and the checkpoints use of a stage's LightningModule (and
    nothing else): the network it trains, the objective of its last pass (K,), the optimiser the
    loop set up (checkpoints save it), which parameters it trains, a chunk's share of the
    full-batch objective, and the end of a step. Stage 1's module also has ``U`` (the hidden
    subspace, which the metrics measure against) and ``shift`` (the centring)."""

    network: torch.nn.Module
    last_loss: torch.Tensor | None
    stage_optimizer: torch.optim.Optimizer | None

    def select_trained(self) -> None: ...

    def training_step(self, batch, batch_idx) -> torch.Tensor | None: ...

    def finish_step(self, optimizer) -> None: ...


def fit_stage(fabric: L.Fabric, module, chunks: Callable[[], Iterable], stage: str, first: int, last: int,
              optimizer=None, optimizer_state: dict | None = None, callbacks: Sequence = ()) -> None:
    """Full-batch steps ``first``..``last`` of a stage: each step runs ``module.training_step`` on
    every chunk of this rank's data and differentiates what it returns (gradients accumulate; DDP
    synchronises them on the last chunk only), then ``module.finish_step(optimizer)``, then the
    ``on_step_end`` of ``callbacks``; their ``on_stage_start`` and ``on_stage_end`` around the
    stage. The hooks are looked up once per stage rather than registered with the Fabric and run
    through ``Fabric.call``, which inspects every callback's signature on every call (a sixth of a
    step at d = 64).
    ``optimizer_state`` restores the optimiser of a resumed stage. ``module``: a ``StageModule``."""
    if not isinstance(module, StageModule):
        missing = [name for name in ("network", "last_loss", "stage_optimizer", "select_trained", "training_step",
                                     "finish_step") if not hasattr(module, name)]
        raise TypeError(f"fit_stage needs a StageModule; {type(module).__name__} lacks {', '.join(missing)}")
    if optimizer is not None:
        module.select_trained()
        wrapped, optimizer = fabric.setup(module, optimizer)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
    else:  # nothing to differentiate (the ridge solve)
        wrapped = module
    module.stage_optimizer = optimizer
    hooks = {name: [hook for hook in (getattr(c, name, None) for c in callbacks) if callable(hook)]
             for name in ("on_stage_start", "on_step_end", "on_stage_end")}
    for hook in hooks["on_stage_start"]:
        hook(fabric=fabric, stage=stage, module=module)
    step_hooks = hooks["on_step_end"]
    step = first - 1
    for step in range(first, last + 1):
        batches = iter(chunks())
        batch, index = next(batches, None), 0
        while batch is not None:
            following = next(batches, None)   # look ahead: is this the pass's last chunk?
            if optimizer is None:
                module.training_step(batch, index)
            else:
                with fabric.no_backward_sync(wrapped, enabled=following is not None):
                    fabric.backward(wrapped.training_step(batch, index))
            batch, index = following, index + 1
        module.finish_step(optimizer)
        for hook in step_hooks:
            hook(fabric=fabric, stage=stage, module=module, step=step)
    for hook in hooks["on_stage_end"]:
        hook(fabric=fabric, stage=stage, module=module, step=step)


class Clock:
    """Wall-clock laps that include the device's queued work (one synchronisation per lap)."""

    def __init__(self, fabric):
        self.cuda = fabric.device.type == "cuda"
        self.last = self.now()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self) -> float:
        now = self.now()
        elapsed, self.last = now - self.last, now
        return elapsed
