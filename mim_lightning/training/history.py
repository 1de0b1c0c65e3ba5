"""The stage-1 metric history: what a recorded step keeps on the device, and the flush that measures
it and brings it to the host and the loggers.

A recorded step copies W into a device buffer (two small ops, no host synchronisation). The flush
(every ``metrics.flush_every_n_steps`` steps, at T1, before a checkpoint, or when the buffer is full)
measures all buffered steps at once: |W|_F, the mass along M's eigenvectors (their sum is the
subspace mass) and W's top-r right singular subspace (``SubspaceTracker``), each as one batched
computation, with the Rayleigh-Ritz eigenproblems of all steps in one eigensolver call and one
transfer to the host. The same code runs on every device, so counting what the CPU dispatches
counts what a GPU would (``tests/test_dispatch.py``).
"""

from __future__ import annotations

import math

import torch

from mim_lightning.config import Config
from mim_lightning.core.measures import cosines_from_overlap, frobenius, ritz_overlap, subspace_iteration, top_right_singular

SNAPSHOT_BYTES = 64 * 2**20  # copies of W kept between flushes, at most (fewer slots: measured when full)
OVERSAMPLE = 16  # directions the tracked block carries beyond r (its span converges at (s_{b+1} / s_r)^2 per iteration)
EXACT_BELOW = 32  # min(m, d) up to this: the exact subspace from W's Gram (no tracking)
VANISHED = 1e-30  # first-layer weights below this (float32 squares underflow) have lost the signal


def snapshot_slots(flush_every_n_steps: int, weight_bytes: int) -> int:
    """Copies of W the metrics keep between flushes: the steps of a flush interval and one more,
    within SNAPSHOT_BYTES (fewer than 2: none, each W is measured at its step)."""
    return min(flush_every_n_steps + 1, SNAPSHOT_BYTES // max(weight_bytes, 1))


class SubspaceTracker:
    """W's top-r right singular subspace at recorded steps, as Rayleigh-Ritz matrices (H, P) that
    ``measures.ritz_overlap`` turns into the overlap with U, for a batch of F steps at once:

    - min(m, d) <= EXACT_BELOW: exact, from W's Gram (W^T W, or W W^T when m < d);
    - ``metrics.subspace = exact``: the top-r subspace by an eigensolver at every recorded step;
    - otherwise tracked: an orthonormal block of r + OVERSAMPLE directions, exact at step 0 and T1
      (and after a resume without a saved block). The steps of flush interval i (steps
      (i - 1) F + 1 .. i F, F = ``metrics.flush_every_n_steps``) all start from the block of the
      last recorded step before the interval (``anchor``) and take ``metrics.tracking_iters`` block
      power iterations, batched over the steps (no eigensolver, no host synchronisation). So a
      step's numbers depend only on its W and the interval's anchor: not on where checkpoints,
      signals or a full buffer cut the measurements.
    """

    def __init__(self, cfg: Config, U: torch.Tensor, m: int):
        self.cfg, self.U = cfg, U
        d, r = U.shape[-1], U.shape[1]
        small = min(m, d) <= EXACT_BELOW
        self.rowspace = small and m < d
        self.mode = "gram" if small else cfg.metrics.subspace
        self.width = min(m, d) if small else (r if self.mode == "exact" else min(r + OVERSAMPLE, m, d))
        self.anchor = None   # (K, d, b): the block the current interval's steps start from
        self.latest = None   # (K, d, b): the block of the last measured step
        self.interval = 0    # the flush interval of the last measured step
        if self.mode == "gram" and not self.rowspace:
            self.anchor = torch.eye(d, dtype=U.dtype, device=U.device).expand(U.shape[0], d, d)

    def interval_of(self, step: int) -> int:
        """The flush interval a step belongs to (0 for step 0)."""
        return -(-step // self.cfg.metrics.flush_every_n_steps)

    def state(self) -> torch.Tensor | None:
        """(2, K, d, b): the anchor and the latest block, for a checkpoint (None unless tracked)."""
        if self.mode != "tracked" or self.latest is None:
            return None
        return torch.stack([self.latest if self.anchor is None else self.anchor, self.latest]).detach().cpu()

    def restore(self, saved: torch.Tensor, last_step: int) -> None:
        """A checkpoint's ``state()``, taken after the recorded step ``last_step``."""
        self.anchor, self.latest = saved[0].to(self.U.device), saved[1].to(self.U.device)
        self.interval = self.interval_of(last_step)

    def matrices(self, W: torch.Tensor, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(H (F K, b, b), P (F K, b, r)), in float64, for the F steps' W (F K, m, d), K replicas per
        step, each scaled to |W|_F = 1 (or not finite)."""
        F, K = len(steps), self.U.shape[0]
        U = self.U.repeat(F, 1, 1)
        if self.rowspace:
            return torch.bmm(W, W.transpose(1, 2)).double(), torch.bmm(W, U.transpose(1, 2)).double()
        if self.mode == "gram":
            Q = self.anchor.repeat(F, 1, 1)
        else:
            cuts = [i for i in range(1, F) if self.interval_of(steps[i]) != self.interval_of(steps[i - 1])]
            if not cuts:   # the usual case: all steps in one interval
                Q = self.blocks(W, steps)
            else:
                edges = [0, *cuts, F]
                Q = torch.cat([self.blocks(W[a * K:b * K], steps[a:b]) for a, b in zip(edges, edges[1:])])
        WQ = torch.bmm(W, Q)
        return torch.bmm(WQ.transpose(1, 2), WQ).double(), torch.bmm(Q.transpose(1, 2), U.transpose(1, 2)).double()

    def blocks(self, W: torch.Tensor, steps: list[int]) -> torch.Tensor:
        """The blocks (F K, d, b) of steps of one interval: exact where required, else iterated from
        the interval's anchor."""
        K = self.U.shape[0]
        if self.interval_of(steps[0]) > self.interval:
            self.anchor, self.interval = self.latest, self.interval_of(steps[0])
        exact = [i for i, step in enumerate(steps) if self.mode == "exact" or step in (0, self.cfg.stage1.steps)
                 or self.anchor is None]
        Q = None if len(exact) == len(steps) else subspace_iteration(W, self.anchor.repeat(len(steps), 1, 1),
                                                                     self.cfg.metrics.tracking_iters)
        if exact:
            rows = torch.cat([W[i * K:(i + 1) * K] for i in exact])
            found = top_right_singular(torch.where(torch.isfinite(rows), rows, 1.0), self.width).transpose(1, 2)
            where = torch.cat([torch.arange(i * K, (i + 1) * K) for i in exact]).to(W.device)
            Q = found if Q is None else Q.index_copy(0, where, found)
        self.latest = Q[-K:]
        return Q


class MetricHistory:
    """Stage 1: subspace mass, principal cosines, |W|_F, mass along M's eigenvectors and the loss,
    every ``metrics.every_n_steps`` steps (and at 0 and T1), measured on the device (``record``) and
    flushed to the host and the loggers every ``metrics.flush_every_n_steps`` steps, at the end and
    before a checkpoint (``flush``). Stage 2: the objective of every pass (``stage2/loss``).

    ``log``: ``log(values, step)`` receiving replica 0's metrics, or a sequence of such callables
    (or None), one per replica. ``directions``: M's eigenvectors as columns (r, r), by |eigenvalue|
    descending, for ``stage1/direction_mass_<k>`` (None: not logged). Tags: docs/reference/tensorboard.md.

    ``rows``: the flushed history, one dict per recorded step with ``step``, ``subspace_mass`` (K,)
    and ``principal_cosines`` (K, r), ``weight_norm`` (K,) and ``loss`` (K,) or None, as lists.
    """

    def __init__(self, cfg: Config, log, directions=None):
        self.cfg = cfg
        self.logs = {0: log} if callable(log) else {k: f for k, f in enumerate(log) if f is not None}
        self.directions = directions
        self.rows: list[dict] = []
        self.first_loss = None   # the first recorded loss (K,), for stage1/loss_change
        self.tracker: SubspaceTracker | None = None
        self.axes = None         # (K, r, d): M's eigenvectors in R^d, or U's rows
        self.buffer = None       # (slots, K, m, d): copies of W at recorded steps, not yet measured
        self.kept: list[tuple] = []      # (step, loss (K,) or None) of the buffer's copies
        self.pending: list[tuple] = []   # (kept, |W|_F, masses, H, P) measured on the device, not yet read
        self.saved_blocks = None  # a resumed run's tracked blocks (SubspaceTracker.state)

    def restore(self, rows: list[dict], blocks: torch.Tensor | None = None) -> None:
        """The flushed history of a resumed run, and its tracked blocks (None: exact at the next step)."""
        self.rows = rows
        self.first_loss = next((row["loss"] for row in rows if row.get("loss") is not None), None)
        self.saved_blocks = blocks

    @torch.no_grad()
    def record(self, W: torch.Tensor, step: int, loss: torch.Tensor | None) -> None:
        """Keep step's W (K, m, d) in the device buffer (measured at the flush, or when the buffer is
        full); a W larger than half the buffer's budget is measured at once."""
        if self.buffer is None:
            slots = snapshot_slots(self.cfg.metrics.flush_every_n_steps, W.numel() * W.element_size())
            self.buffer = W.new_empty((slots if slots >= 2 else 0, *W.shape))
        if len(self.buffer) == 0:
            self.kept.append((step, loss))
            self.measure(W)
            return
        if len(self.kept) == len(self.buffer):
            self.measure()
        self.buffer[len(self.kept)].copy_(W)
        self.kept.append((step, loss))

    @torch.no_grad()
    def measure(self, W: torch.Tensor | None = None) -> None:
        """|W|_F, the masses and the Rayleigh-Ritz matrices of every kept step (the buffer's, or
        ``W``), batched over the steps and replicas, into ``pending`` (device tensors, not yet read)."""
        if not self.kept:
            return
        kept, self.kept = self.kept, []
        W = (self.buffer[:len(kept)] if W is None else W.unsqueeze(0)).flatten(0, 1)     # (F K, m, d)
        norm = frobenius(W)
        scale = (1 / norm.clamp_min(1e-300)).clamp_max(torch.finfo(W.dtype).max).to(W.dtype)
        W = W * scale.view(-1, 1, 1)                                                 # |W|_F = 1: nothing underflows
        along = torch.bmm(W, self.axes.repeat(len(kept), 1, 1).transpose(1, 2)).square().sum(1)
        H, P = self.tracker.matrices(W, [step for step, _ in kept])
        finite = torch.isfinite(norm + H.sum((1, 2)) + P.sum((1, 2)))                 # no eigensolve of NaN
        norm = torch.where(finite, norm, float("nan"))                                # not recorded
        finite = finite.view(-1, 1, 1)
        self.pending.append((kept, norm, along.double(), torch.where(finite, H, 0.0), torch.where(finite, P, 0.0)))

    def flush(self) -> None:
        """Measure what is kept, solve the Rayleigh-Ritz eigenproblems of all pending steps in one
        batched call, move the results to the host at once, then the rows and the loggers."""
        self.measure()
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        kept = [entry for p in pending for entry in p[0]]
        F, K, r = len(kept), self.axes.shape[0], self.axes.shape[1]
        norm, along, H, P = (torch.cat([p[i] for p in pending]) for i in range(1, 5))
        overlap = ritz_overlap(H, P, r, self.tracker.rowspace)
        losses = torch.stack([torch.full_like(norm[:K], float("nan")) if loss is None else loss.double()
                              for _, loss in kept])
        host = torch.cat([norm, along.flatten(), overlap.flatten(), losses.flatten()]).cpu()
        norms, along, overlaps, losses = host.split([F * K, F * K * r, overlap.numel(), F * K])
        norms, along = norms.view(F, K), along.view(F, K, r).float()
        overlaps = overlaps.view(F, K, r, r)
        recorded = torch.isfinite(norms).all(-1)
        cosines = cosines_from_overlap(overlaps).float()
        self.log_rows([step for step, _ in kept], recorded.tolist(), along.sum(-1).tolist(), cosines.tolist(),
                      norms.tolist(), None if self.directions is None else along.tolist(),
                      [None if loss is None else row for (_, loss), row in zip(kept, losses.view(F, K).tolist())])

    def log_rows(self, steps, recorded, mass, cosines, norms, along, losses) -> None:
        """Append the flushed steps to ``rows`` and send each replica's values to its logger: the
        masses, the principal cosines and their minimum, log10 |W|_F and its growth per step, the
        loss and its change relative to the first recorded loss (``relative_change``)."""
        from mim_lightning.training.tensorboard import relative_change
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
                    values["stage1/loss_change"] = relative_change(losses[i][k], self.first_loss[k])
                if recorded[i]:
                    values["stage1/subspace_mass"] = mass[i][k]
                    values.update({f"stage1/principal_cosine_{j + 1}": c for j, c in enumerate(cosines[i][k])})
                    values["stage1/principal_cosine_min"] = min(cosines[i][k])
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
        U, W = module.U, module.network.W
        self.axes = U if self.directions is None else torch.einsum(
            "lk,nld->nkd", torch.as_tensor(self.directions, dtype=U.dtype, device=U.device), U)
        self.tracker = SubspaceTracker(self.cfg, U, W.shape[1])
        if self.saved_blocks is not None and self.tracker.mode == "tracked" and self.rows:
            self.tracker.restore(self.saved_blocks, self.rows[-1]["step"])
        if not self.rows:   # step 0 measured at once: its exact block starts the tracking
            self.record(W.detach(), 0, None)
            self.measure()

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
