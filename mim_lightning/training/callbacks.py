"""Callbacks of the training loop (called through ``Fabric.call``): the divergence guard and the
checkpoints (the stage-1 metric history is ``training.history``).

Hooks: ``on_stage_start(fabric, stage, module)``, ``on_step_end(fabric, stage, module, step)`` and
``on_stage_end(fabric, stage, module, step)``, with ``stage`` "stage1" or "stage2" and ``step``
counted from 1 (0 is the initialisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from mim_lightning.config import Config
from mim_lightning.core.measures import frobenius
from mim_lightning.errors import Interrupted, RunFailed
from mim_lightning.training.checkpoints import StopRequest, save_checkpoint
from mim_lightning.training.history import VANISHED

class DivergenceGuard:
    """Stop a run whose weights or loss are not finite, or whose first layer vanished, with the
    stage, the step and the knob to change. Stage 1 is checked every ``flush_every_n_steps``
    steps (a check is a host synchronisation), stage 2 after every pass."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def on_step_end(self, fabric, stage: str, module, step: int) -> None:
        if stage == "stage1":
            every = self.cfg.metrics.flush_every_n_steps
            if step % every == 0 or step == self.cfg.stage1.steps:
                self.check_stage1(module, step)
        else:
            self.check_stage2(module, step)

    def check_stage1(self, module, step: int) -> None:
        """One host read: whether W and the loss are finite, and whether W vanished."""
        s1, norm = self.cfg.stage1, frobenius(module.network.W.detach())   # NaN or inf when W is not finite
        finite = torch.isfinite(norm).all() & torch.isfinite(module.last_loss).all()
        finite, vanished = torch.stack([finite, norm.max() < VANISHED]).tolist()
        if not finite:
            raise RunFailed(
                f"stage 1 diverged by step {step}: the first-layer weights or the loss are not finite; "
                f"lower stage1.lr (now {s1.lr}) or model.init_scale (now {self.cfg.model.init_scale})")
        if vanished:
            raise RunFailed(
                f"stage 1 vanished by step {step}: the first-layer weights underflowed to ~0 (|W|_F < {VANISHED:g}); "
                f"each step multiplies W by about stage1.lr * |lambda_1(M)| + (1 - stage1.lr * stage1.weight_decay): "
                f"raise stage1.lr (now {s1.lr}) towards 1 / |lambda_1(M)| (mim theory) or raise model.init_scale")

    def check_stage2(self, module, step: int) -> None:
        if not bool(torch.isfinite(module.last_loss).all()) or not bool(torch.isfinite(module.network.a).all()):
            raise RunFailed(
                f"stage 2 diverged at step {step}: the second-layer weights or the loss are not finite; "
                f"lower stage2.lr (now {self.cfg.stage2.lr}) or use stage2.solver=ridge with squared loss")


class StepCheckpoint:
    """Save the run's state every ``every_n_steps`` steps, at each stage's end, and at the first
    step boundary after a stop request (then raise ``Interrupted``). ``snapshot(stage, step,
    module)`` builds the state to save; under DDP every rank agrees on stopping, rank zero writes."""

    def __init__(self, path: Path, every_n_steps: int, stop: StopRequest,
                 snapshot: Callable[[str, int, object], dict], last_steps: dict[str, int]):
        self.path, self.every_n_steps, self.stop, self.snapshot = Path(path), every_n_steps, stop, snapshot
        self.last_steps = last_steps

    def stop_requested(self, fabric) -> bool:
        requested = self.stop.signal_name is not None
        if fabric.world_size > 1:  # every rank stops at the same step
            flag = torch.tensor(float(requested), device=fabric.device)
            requested = bool(fabric.all_reduce(flag, reduce_op="sum") > 0)
            if requested and self.stop.signal_name is None:
                self.stop.signal_name = "a signal on another rank"
        return requested

    def on_step_end(self, fabric, stage: str, module, step: int) -> None:
        requested = self.stop_requested(fabric)
        if requested or step % self.every_n_steps == 0 or step == self.last_steps[stage]:
            state = self.snapshot(stage, step, module)   # collective-free: every rank builds it, rank zero writes
            if fabric.is_global_zero:
                save_checkpoint(self.path, state)
            fabric.barrier()
        if requested:
            raise Interrupted(self.stop.signal_name, stage, step, self.path)
