"""Callbacks of the training loop (called through ``Fabric.call``): the stage-1 metric history,
the divergence guard and the checkpoints.

Hooks: ``on_stage_start(fabric, stage, module)``, ``on_step_end(fabric, stage, module, step)`` and
``on_stage_end(fabric, stage, module, step)``, with ``stage`` "stage1" or "stage2" and ``step``
counted from 1 (0 is the initialisation).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from mim_lightning.config import Config
from mim_lightning.core.measures import (cosines_from_overlap, direction_mass, frobenius, refine_subspace, subspace_mass,
                                         top_right_singular)
from mim_lightning.errors import RunFailed
from mim_lightning.training.checkpoints import Interrupted, StopRequest, save_checkpoint

TRACKING_OVERSAMPLE = 8  # extra directions carried by the tracked subspace estimate
TRACKING_TOL = 1e-6  # on the CPU the tracked subspace stops iterating once it moves less than this (squared sines; cosines then agree to ~1e-6)
EXACT_BELOW = 128  # metrics: the exact eigensolver whenever min(m, d) <= this (cheaper than tracking)
SNAPSHOT_BYTES = 32 * 2**20  # copies of W kept between flushes for one batched measurement, at most
VANISHED = 1e-30  # first-layer weights below this (float32 squares underflow) have lost the signal


def snapshot_slots(flush_every_n_steps: int, weight_bytes: int) -> int:
    """Copies of W the metrics keep between flushes: the steps of a flush interval and step 0,
    within SNAPSHOT_BYTES (fewer than 2: none, each W is measured at once)."""
    return min(flush_every_n_steps + 1, SNAPSHOT_BYTES // max(weight_bytes, 1))


class MetricHistory:
    """Stage 1: subspace mass, principal cosines, |W|_F, mass along M's eigenvectors and the loss,
    every ``metrics.every_n_steps`` steps (and at 0 and T1), computed on the device (no host
    synchronisation per step) and flushed to the host and the loggers every
    ``metrics.flush_every_n_steps`` steps, at the end and before a checkpoint.
    Small first layers (K m d floats, up to ``SNAPSHOT_BYTES`` for all steps between flushes)
    are copied into a buffer at the recorded step and measured together at the flush: one batched
    computation instead of some forty small tensor operations per step, which at small d cost more
    than the step itself. Larger ones are measured at once.
    Stage 2: the objective of every pass (``stage2/loss``; one synchronisation per pass).

    ``log``: ``log(values, step)`` receiving replica 0's metrics, or a sequence of such callables
    (or None), one per replica. ``directions``: M's eigenvectors as columns (r, r), by |eigenvalue|
    descending, for ``stage1/direction_mass_<k>`` (None: not logged). Tags: README.md#tensorboard.

    ``rows``: the flushed history, one dict per recorded step with ``step``, ``subspace_mass`` (K,)
    and ``principal_cosines`` (K, r), ``weight_norm`` (K,) and ``loss`` (K,) or None, as lists.
    """

    def __init__(self, cfg: Config, log, directions=None):
        self.cfg, self.U = cfg, None
        self.logs = {0: log} if callable(log) else {k: f for k, f in enumerate(log) if f is not None}
        self.rows: list[dict] = []
        self.snapshots: list[tuple] = []   # (step, loss) of the weights in ``buffer``, not yet measured
        self.buffer = None                 # (slots, K, m, d): copies of W at recorded steps
        self.pending: list[tuple] = []     # (steps, mass, overlap, losses, norm, along) measured, not yet flushed
        self.basis = None
        self.directions, self.eigenbasis = directions, None
        self.first_loss = None   # the first recorded loss (K,), for stage1/loss_change

    def restore(self, rows: list[dict]) -> None:
        """The flushed history of a resumed run."""
        self.rows = rows
        self.first_loss = next((row["loss"] for row in rows if row.get("loss") is not None), None)

    @torch.no_grad()
    def record(self, W: torch.Tensor, step: int, loss: torch.Tensor | None) -> None:
        """Keep step's W (copied into the snapshot buffer when it is small, measured when the
        buffer is full or at the flush) or measure it now."""
        slots = snapshot_slots(self.cfg.metrics.flush_every_n_steps, W.numel() * W.element_size())
        if slots < 2:
            self.snapshots.append((step, loss))
            self.measure(W.unsqueeze(0))
            return
        if self.buffer is None or self.buffer.shape[1:] != W.shape or self.buffer.dtype != W.dtype:
            self.buffer = torch.empty((slots, *W.shape), dtype=W.dtype, device=W.device)
        if len(self.snapshots) == len(self.buffer):
            self.measure()
        self.buffer[len(self.snapshots)].copy_(W)
        self.snapshots.append((step, loss))

    @torch.no_grad()
    def measure(self, W: torch.Tensor | None = None) -> None:
        """Mass, overlap Q U^T (r, r), |W|_F, mass per eigenvector of M of every kept W (the
        buffer's, or ``W`` (F, K, m, d)), batched over the F kept steps and K replicas (W viewed as
        (F K, m, d)). The mass along M's eigenvectors sums to the subspace mass (they are an
        orthonormal basis of span U), so one product W V^T gives both."""
        if not self.snapshots:
            return
        snapshots, self.snapshots = self.snapshots, []
        F, K = len(snapshots), self.U.shape[0]
        W = (self.buffer[:F] if W is None else W).flatten(0, 1)        # (F K, m, d)
        U = self.U.repeat(F, 1, 1)
        norm = frobenius(W)                                          # NaN or inf when W is not finite
        if self.eigenbasis is None:
            along, mass = None, subspace_mass(W, U)
        else:
            along = direction_mass(W, self.eigenbasis.repeat(F, 1, 1), norm)
            mass = along.sum(-1)
        overlap = torch.bmm(self.subspace(W, [s[0] for s in snapshots], norm), U.transpose(1, 2))
        split = lambda t: None if t is None else t.view(F, K, *t.shape[1:])   # noqa: E731
        self.pending.append(([s[0] for s in snapshots], split(mass), split(overlap), [s[1] for s in snapshots],
                             split(norm), split(along)))

    def subspace(self, W: torch.Tensor, steps: list[int], norm: torch.Tensor) -> torch.Tensor:
        """Top-r right singular vectors (F K, r, d) of W stacked over steps (F K, m, d): exact at
        steps 0 and T1, with metrics.subspace = exact, and whenever min(m, d) <= EXACT_BELOW (an
        eigensolver of that size costs less than tracking); otherwise tracked from the previous
        recorded step. Replicas whose W is not finite get NaN (eigensolvers fail on NaN input)."""
        r, metrics, small = self.U.shape[1], self.cfg.metrics, min(W.shape[1:]) <= EXACT_BELOW
        finite = torch.isfinite(norm).view(-1, 1, 1)
        if W.device.type != "cpu" or not bool(finite.all()):   # a check would sync a GPU: always guard there
            W = torch.where(finite, W, torch.ones_like(W))
        if metrics.subspace == "exact" or small:
            basis = top_right_singular(W, r)
        else:
            tol = TRACKING_TOL if W.device.type == "cpu" else None  # a check would sync a GPU
            rows, K = [], self.U.shape[0]
            for W_step, norm_step, step in zip(W.split(K), norm.split(K), steps, strict=True):
                if step in (0, self.cfg.stage1.steps) or self.basis is None:
                    self.basis = top_right_singular(W_step, min(r + TRACKING_OVERSAMPLE, *W.shape[1:])).transpose(1, 2)
                else:
                    self.basis = refine_subspace(W_step, torch.where(torch.isfinite(self.basis), self.basis, 1.0),
                                                 metrics.tracking_iters, r, tol, norm_step)
                rows.append(self.basis.transpose(1, 2))
            basis = torch.cat(rows)
        basis = torch.where(finite, basis, float("nan"))
        return basis[:, :r]

    def flush(self) -> None:
        """Measure the kept weights, move the pending rows to the host (one synchronisation) and
        log them."""
        self.measure()
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        steps = [step for p in pending for step in p[0]]
        mass = torch.cat([p[1] for p in pending]).cpu()
        overlaps = torch.cat([p[2] for p in pending]).cpu()
        norms = torch.cat([p[4] for p in pending]).double().cpu()
        along = None if pending[0][5] is None else torch.cat([p[5] for p in pending]).cpu()
        losses = [loss for p in pending for loss in p[3]]
        with_loss = [i for i, loss in enumerate(losses) if loss is not None]
        stacked = torch.stack([losses[i] for i in with_loss]).double().cpu().tolist() if with_loss else []
        for i, loss in zip(with_loss, stacked, strict=True):
            losses[i] = loss
        recorded = (torch.isfinite(overlaps).flatten(2).all(-1) & torch.isfinite(mass)).all(-1)
        cosines = torch.full(overlaps.shape[:-1], float("nan"))
        cosines[recorded] = cosines_from_overlap(overlaps[recorded])
        recorded, mass, cosines, norms = recorded.tolist(), mass.tolist(), cosines.tolist(), norms.tolist()   # one conversion each
        along = None if along is None else along.tolist()
        for i, step in enumerate(steps):
            previous = self.rows[-1] if self.rows else None
            if self.first_loss is None and losses[i] is not None:
                self.first_loss = losses[i]
            if recorded[i]:
                self.rows.append({"step": step, "subspace_mass": mass[i], "principal_cosines": cosines[i],
                                  "weight_norm": norms[i], "loss": losses[i]})
            for k, log in self.logs.items():
                values = {}
                if losses[i] is not None:
                    values["stage1/loss"] = losses[i][k]
                    values["stage1/loss_change"] = losses[i][k] - self.first_loss[k]
                if recorded[i]:
                    values["stage1/subspace_mass"] = mass[i][k]
                    values.update({f"stage1/principal_cosine_{j + 1}": c for j, c in enumerate(cosines[i][k])})
                    if along is not None:
                        values.update({f"stage1/direction_mass_{j + 1}": m for j, m in enumerate(along[i][k])})
                    norm = norms[i][k]
                    values["stage1/log10_weight_norm"] = math.log10(max(norm, VANISHED))
                    if previous is not None and previous.get("weight_norm") and step > previous["step"]:
                        before = max(previous["weight_norm"][k], VANISHED)
                        values["stage1/weight_growth"] = (norm / before) ** (1 / (step - previous["step"]))
                if values:
                    log(values, step)

    def on_stage_start(self, fabric, stage: str, module) -> None:
        if stage != "stage1":
            return
        self.U = module.U
        if self.directions is not None:  # M's eigenvectors in R^d: rows (K, r, d), by |eigenvalue| descending
            vectors = torch.as_tensor(self.directions, dtype=self.U.dtype, device=self.U.device)
            self.eigenbasis = torch.einsum("lk,nld->nkd", vectors, self.U)
        if not self.rows:
            self.record(module.network.W.detach(), 0, None)

    def on_step_end(self, fabric, stage: str, module, step: int) -> None:
        if stage != "stage1":
            losses = module.last_loss.tolist()
            for k, log in self.logs.items():
                log({"stage2/loss": losses[k]}, step)
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
        s1, norm = self.cfg.stage1, frobenius(module.network.W.detach())   # NaN or inf when W is not finite
        finite = bool(torch.isfinite(norm).all()) and bool(torch.isfinite(module.last_loss).all())
        if not finite:
            raise RunFailed(
                f"stage 1 diverged by step {step}: the first-layer weights or the loss are not finite; "
                f"lower stage1.lr (now {s1.lr}) or model.init_scale (now {self.cfg.model.init_scale})")
        if float(norm.max()) < VANISHED:
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
