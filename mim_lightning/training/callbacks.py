"""Callbacks of the training loop (called through ``Fabric.call``): the stage-1 metric history,
the divergence guard and the checkpoints.

Hooks: ``on_stage_start(fabric, stage, module)``, ``on_step_end(fabric, stage, module, step)`` and
``on_stage_end(fabric, stage, module, step)``, with ``stage`` "stage1" or "stage2" and ``step``
counted from 1 (0 is the initialisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from mim_lightning.config import Config
from mim_lightning.core.measures import cosines_from_overlap, refine_subspace, subspace_mass, top_right_singular
from mim_lightning.errors import MimError
from mim_lightning.training.checkpoints import Interrupted, StopRequest, save_checkpoint

TRACKING_OVERSAMPLE = 8  # extra directions carried by the tracked subspace estimate
TRACKING_TOL = 1e-8  # on the CPU the tracked subspace stops iterating once it moves less than this (squared sines)
VANISHED = 1e-30  # first-layer weights below this (float32 squares underflow) have lost the signal


class MetricHistory:
    """Stage 1: subspace mass and principal cosines of W every ``metrics.every_n_steps`` steps (and
    at 0 and T1), recorded on the device (no host synchronisation per step) and flushed to the host
    and the logger every ``metrics.flush_every_n_steps`` steps, at the end and before a checkpoint.
    Stage 2: the objective of every pass (``stage2/loss``; one synchronisation per pass).

    ``rows``: the flushed history, one dict per recorded step with ``step``, ``subspace_mass`` (K,)
    and ``principal_cosines`` (K, r) as lists.
    """

    def __init__(self, cfg: Config, log: Callable[[dict, int], None]):
        self.cfg, self.log, self.U = cfg, log, None
        self.rows: list[dict] = []
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.basis = None

    @torch.no_grad()
    def record(self, W: torch.Tensor, step: int, loss: torch.Tensor | None) -> None:
        """Append step's mass, overlap Q U^T (K, r, r) and loss, on the device."""
        mass = subspace_mass(W, self.U)                  # NaN when W is not finite
        self.pending.append((step, mass, torch.bmm(self.subspace(W, step), self.U.transpose(1, 2)), loss))

    def subspace(self, W: torch.Tensor, step: int) -> torch.Tensor:
        """Top-r right singular vectors of W (K, r, d): exact at steps 0 and T1 (and always with
        metrics.subspace = exact), otherwise tracked from the previous recorded step."""
        r, metrics = self.U.shape[1], self.cfg.metrics
        if metrics.subspace == "exact" or step in (0, self.cfg.stage1.steps) or self.basis is None:
            width = min(r + TRACKING_OVERSAMPLE, *W.shape[1:])
            finite = torch.isfinite(W).flatten(1).all(-1).view(-1, 1, 1)   # an eigensolver fails on NaN
            self.basis = top_right_singular(torch.where(finite, W, torch.ones_like(W)), width).transpose(1, 2)
            self.basis = torch.where(finite, self.basis, float("nan"))
        else:
            tol = TRACKING_TOL if W.device.type == "cpu" else None  # a check would sync a GPU
            self.basis = refine_subspace(W, self.basis, metrics.tracking_iters, r, tol)
        return self.basis[..., :r].transpose(1, 2)

    def flush(self) -> None:
        """Move pending rows to the host (one synchronisation) and log them."""
        if not self.pending:
            return
        steps = [p[0] for p in self.pending]
        mass = torch.stack([p[1] for p in self.pending]).cpu()
        overlaps = torch.stack([p[2] for p in self.pending]).cpu()
        losses = [None if p[3] is None else float(p[3][0]) for p in self.pending]
        self.pending = []
        recorded = torch.isfinite(overlaps).flatten(1).all(-1) & torch.isfinite(mass).all(-1)
        cosines = torch.full(overlaps.shape[:-1], float("nan"))
        cosines[recorded] = cosines_from_overlap(overlaps[recorded])
        for i, step in enumerate(steps):
            values = {} if losses[i] is None else {"stage1/loss": losses[i]}
            if recorded[i]:
                values["stage1/subspace_mass"] = float(mass[i, 0])
                values.update({f"stage1/principal_cosine_{k + 1}": float(c) for k, c in enumerate(cosines[i, 0])})
                self.rows.append({"step": step, "subspace_mass": mass[i].tolist(), "principal_cosines": cosines[i].tolist()})
            if values:
                self.log(values, step)

    def on_stage_start(self, fabric, stage: str, module) -> None:
        if stage != "stage1":
            return
        self.U = module.U
        if not self.rows:
            self.record(module.network.W.detach(), 0, None)

    def on_step_end(self, fabric, stage: str, module, step: int) -> None:
        if stage != "stage1":
            self.log({"stage2/loss": float(module.last_loss[0])}, step)
            return
        metrics = self.cfg.metrics
        if step % metrics.every_n_steps == 0 or step == self.cfg.stage1.steps:
            self.record(module.network.W.detach(), step, module.last_loss)
        if step % metrics.flush_every_n_steps == 0 or step == self.cfg.stage1.steps:
            self.flush()

    def on_stage_end(self, fabric, stage: str, module, step: int) -> None:
        if stage == "stage1":
            self.flush()


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
        s1, W = self.cfg.stage1, module.network.W.detach()
        finite = bool(torch.isfinite(W).all()) and bool(torch.isfinite(module.last_loss).all())
        if not finite:
            raise MimError(
                f"stage 1 diverged by step {step}: the first-layer weights or the loss are not finite; "
                f"lower stage1.lr (now {s1.lr}) or model.init_scale (now {self.cfg.model.init_scale})")
        if float(W.abs().amax()) < VANISHED:
            raise MimError(
                f"stage 1 vanished by step {step}: the first-layer weights underflowed to ~0 (max |w| < {VANISHED:g}); "
                f"each step multiplies W by about stage1.lr * |lambda_1(M)| + (1 - stage1.lr * stage1.weight_decay): "
                f"raise stage1.lr (now {s1.lr}) towards 1 / |lambda_1(M)| (mim theory) or raise model.init_scale")

    def check_stage2(self, module, step: int) -> None:
        if not bool(torch.isfinite(module.last_loss).all()) or not bool(torch.isfinite(module.network.a).all()):
            raise MimError(
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
