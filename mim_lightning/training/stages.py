"""The two stages of layer-wise training as LightningModules (SCIENCE.md section 3).

One Lightning epoch is one full-batch gradient step: each batch is a chunk of this rank's shard,
its loss is normalised by the global sample count (times the world size, which DDP's averaging
divides back out), gradients accumulate over the chunks and the optimiser steps after the last.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch

from mim_lightning.config import Config
from mim_lightning.core.streams import generator
from mim_lightning.errors import MimError
from mim_lightning.core.measures import RelativeMSE, cosines_from_overlap, refine_subspace, subspace_mass, top_right_singular
from mim_lightning.core.network import TwoLayerNetwork
from mim_lightning.core.spectral import mean_preprocessing


TRACKING_OVERSAMPLE = 8  # extra directions carried by the tracked subspace estimate
TRACKING_TOL = 1e-8  # on the CPU the tracked subspace stops iterating once it moves less than this (squared sines)
VANISHED = 1e-30  # first-layer weights below this (float32 squares underflow) have lost the signal


class _FullBatchModule(L.LightningModule):
    """Shared plumbing: chunk bookkeeping and sums over ranks."""

    trained: tuple[str, ...] = ("W",)

    def __init__(self, network: TwoLayerNetwork, loss: Callable, split: str):
        super().__init__()
        self.automatic_optimization = False
        self.network = network
        self.loss = loss
        self.split = split

    def setup(self, stage: str) -> None:
        """Only the stage's layer requires grad; this runs before DDP wraps the model, so DDP
        synchronises exactly that layer's gradient."""
        for name, parameter in self.network.named_parameters():
            parameter.requires_grad_(name in self.trained)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def on_train_start(self):
        dm = self.trainer.datamodule
        self.n = dm.n(self.split)
        self.scale = dm.world / self.n
        self.chunk_count = len(dm.chunks(self.split))
        self.loss_sum = torch.zeros(self.network.W.shape[0], device=self.device)

    def is_last_chunk(self, batch_idx: int) -> bool:
        return batch_idx == self.chunk_count - 1


class Stage1Module(_FullBatchModule):
    """Full-batch GD on the first layer only: W <- W - eta1 (grad_W Lhat_D1 + beta1 W).

    With ``center``, the loss is loss(t, y) + mean_D1(T) t, so that -loss'(0, y) = T(y) - mean(T).
    Metrics (subspace mass, principal cosines) go to a device-side history every
    ``every_n_steps`` steps, flushed to the logger every ``flush_every_n_steps`` steps (one host
    synchronisation per flush); the flush also stops a diverged run.
    """

    def __init__(self, network: TwoLayerNetwork, loss: Callable, cfg: Config):
        super().__init__(network, loss, "d1")
        self.cfg = cfg
        self.history: list[dict] = []
        self.restored = False
        self.basis = None

    @property
    def trained(self) -> tuple[str, ...]:
        """W only; all parameters for the joint-training ablation (stage1.joint)."""
        return ("W", "a", "b") if self.cfg.stage1.joint else ("W",)

    def configure_optimizers(self):
        """SGD with weight decay beta1 on W (the joint ablation also moves a and b, undecayed)."""
        s1, net = self.cfg.stage1, self.network
        groups = [{"params": [net.W], "weight_decay": s1.weight_decay}]
        if s1.joint:
            groups.append({"params": [net.a, net.b], "weight_decay": 0.0})
        return torch.optim.SGD(groups, lr=s1.lr)

    def on_train_start(self):
        super().on_train_start()
        dm = self.trainer.datamodule
        K, steps = self.network.W.shape[0], self.cfg.stage1.steps
        self.U = dm.U
        if self.restored:  # resumed: history and shift come from the checkpoint
            self.mass, self.overlaps, self.losses, self.shift = (
                t.to(self.device) for t in (self.mass, self.overlaps, self.losses, self.shift))
            return
        if self.cfg.stage1.center:
            self.shift = mean_preprocessing(dm.chunks("d1"), self.loss, self.n, self.reduce_sum)
        else:
            self.shift = torch.zeros(K, device=self.device)
        self.mass = torch.full((steps + 1, K), float("nan"), device=self.device)
        r = self.U.shape[1]
        self.overlaps = torch.full((steps + 1, K, r, r), float("nan"), device=self.device)
        self.losses = torch.full((steps + 1, K), float("nan"), device=self.device)
        self.flushed = -1
        self.record(0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Flush, then keep the history with the weights (checkpoints are taken at step ends)."""
        step = self.current_epoch + 1
        if self.flushed < step:
            self.flush(step)
        checkpoint["mim"] = {"stage": 1, "mass": self.mass.cpu(), "overlaps": self.overlaps.cpu(),
                             "losses": self.losses.cpu(), "shift": self.shift.cpu(),
                             "history": self.history, "flushed": self.flushed}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the history (also when the checkpoint is the stage's last step and Lightning
        skips the training hooks)."""
        state = checkpoint["mim"]
        self.mass, self.overlaps, self.losses, self.shift = (state[k] for k in ("mass", "overlaps", "losses", "shift"))
        self.history, self.flushed, self.restored = state["history"], state["flushed"], True

    @torch.no_grad()
    def record(self, step: int) -> None:
        """Metrics of W into the history row ``step``; NaN (no exception, no sync) if W is not finite."""
        W = self.network.W.detach()
        self.mass[step] = subspace_mass(W, self.U)                  # NaN when W is not finite
        self.overlaps[step] = torch.bmm(self.subspace(W, step), self.U.transpose(1, 2))  # Q U^T, (K, r, r)

    def subspace(self, W: torch.Tensor, step: int) -> torch.Tensor:
        """Top-r right singular vectors of W (K, r, d): exact at steps 0 and T1 (and always with
        metrics.subspace = exact), otherwise tracked from the previous recorded step."""
        r = self.U.shape[1]
        metrics = self.cfg.metrics
        if metrics.subspace == "exact" or step in (0, self.cfg.stage1.steps) or self.basis is None:
            width = min(r + TRACKING_OVERSAMPLE, *W.shape[1:])
            finite = torch.isfinite(W).flatten(1).all(-1).view(-1, 1, 1)   # an eigensolver fails on NaN
            self.basis = top_right_singular(torch.where(finite, W, torch.ones_like(W)), width).transpose(1, 2)
            self.basis = torch.where(finite, self.basis, float("nan"))
        else:
            tol = TRACKING_TOL if W.device.type == "cpu" else None  # a check would sync a GPU
            self.basis = refine_subspace(W, self.basis, metrics.tracking_iters, r, tol)
        return self.basis[..., :r].transpose(1, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        f = self.network(x)
        per_sample = self.loss(f, y)
        self.manual_backward((per_sample + self.shift.unsqueeze(-1) * f).sum() * self.scale)
        self.loss_sum += per_sample.detach().sum(-1)
        if not self.is_last_chunk(batch_idx):
            return
        optimizer = self.optimizers()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        step = self.current_epoch + 1
        self.losses[step] = self.reduce_sum(self.loss_sum) / self.n
        self.loss_sum.zero_()
        metrics = self.cfg.metrics
        if step % metrics.every_n_steps == 0 or step == self.cfg.stage1.steps:
            self.record(step)
        if step % metrics.flush_every_n_steps == 0 or step == self.cfg.stage1.steps:
            self.flush(step)

    def flush(self, upto: int) -> None:
        """Move history rows (flushed, upto] to the host, stop on divergence, log them."""
        rows = slice(self.flushed + 1, upto + 1)
        finite = bool(torch.isfinite(self.network.W).all())
        if finite and float(self.network.W.detach().abs().amax()) < VANISHED:
            raise MimError(
                f"stage 1 vanished by step {upto}: the first-layer weights underflowed to ~0 (max |w| < {VANISHED:g}); "
                f"each step multiplies W by about stage1.lr * |lambda_1(M)| + (1 - stage1.lr * stage1.weight_decay): "
                f"raise stage1.lr (now {self.cfg.stage1.lr}) towards 1 / |lambda_1(M)| (mim theory) or raise model.init_scale"
            )
        mass, overlaps, losses = self.mass[rows].cpu(), self.overlaps[rows].cpu(), self.losses[rows].cpu()
        recorded = torch.isfinite(overlaps).flatten(1).all(-1) & torch.isfinite(mass).all(-1)
        cosines = torch.full(overlaps.shape[:-1], float("nan"))
        cosines[recorded] = cosines_from_overlap(overlaps[recorded])  # on the host: no sync per step
        for i, step in enumerate(range(rows.start, rows.stop)):
            if step > 0 and not bool(torch.isfinite(losses[i]).all()) or (not finite and step == upto):
                raise MimError(
                    f"stage 1 diverged at step {step}: the first-layer weights or the loss are not finite; "
                    f"lower stage1.lr (now {self.cfg.stage1.lr}) or model.init_scale (now {self.cfg.model.init_scale})"
                )
            values = {}
            if step > 0:
                values["stage1/loss"] = float(losses[i, 0])
            if recorded[i]:
                values["stage1/subspace_mass"] = float(mass[i, 0])
                values.update({f"stage1/principal_cosine_{k + 1}": float(c) for k, c in enumerate(cosines[i, 0])})
                self.history.append({
                    "step": step,
                    "subspace_mass": mass[i].tolist(),
                    "principal_cosines": cosines[i].tolist(),
                })
            if self.logger is not None and values:
                self.logger.log_metrics(values, step=step)
        self.flushed = upto

    def on_train_end(self):
        """Flush what is left up to the last completed step (earlier than T1 after a stop request)."""
        done = self.trainer.current_epoch if self.trainer.should_stop else self.cfg.stage1.steps
        if self.flushed < done:
            self.flush(done)


class Stage2Module(_FullBatchModule):
    """The convex second-layer fit on D2 with W fixed:
    min_a (1/n2) sum_i loss(sum_j a_j sigma(w_j . x_i + b_j), y_i) + beta2 |a|^2.

    Before the fit: biases re-initialised (normal / uniform / zero, scale s), rows of W optionally
    rescaled to unit norm, a set to 0. Solvers: "ridge" solves the normal equations of the squared
    loss 0.5 (t - y)^2 exactly, (Phi^T Phi / n + 2 beta2 I) a = Phi^T y / n, summed over chunks and
    ranks; "gd" and "lbfgs" take one full-batch step per epoch. The gd step is
    stage2.lr / L with L = lambda_max(Phi^T Phi / n) + 2 beta2, the smoothness constant for losses
    with loss'' <= 1 (all built-ins), so stage2.lr < 2 converges.
    """

    trained = ("a",)

    def __init__(self, network: TwoLayerNetwork, loss: Callable, cfg: Config, solver: str, seeds):
        super().__init__(network, loss, "d2")
        self.cfg, self.solver, self.seeds = cfg, solver, list(seeds)
        self.stage1_outputs: dict = {}
        self.test_metric = RelativeMSE(replicas=len(self.seeds))
        self.test_rel_mse = None
        self.last_loss = None

    def configure_optimizers(self):
        s2 = self.cfg.stage2
        if self.solver == "lbfgs":
            return torch.optim.LBFGS([self.network.a], lr=s2.lr, max_iter=1, history_size=20)
        return torch.optim.SGD([self.network.a], lr=s2.lr)

    @torch.no_grad()
    def prepare_network(self) -> None:
        """Re-initialise b, rescale the rows of W, zero a."""
        s2, net = self.cfg.stage2, self.network
        K, m = net.b.shape
        if s2.bias_init == "zero":
            net.b.zero_()
        else:
            draws = []
            for seed in self.seeds:
                g = generator(seed, "bias", torch.device("cpu"))
                draws.append(torch.randn(m, generator=g) if s2.bias_init == "normal" else 2 * torch.rand(m, generator=g) - 1)
            net.b.copy_(torch.stack(draws).to(net.b) * s2.bias_scale)
        if s2.rescale:
            net.W.div_(net.W.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(net.W.dtype).tiny))
        net.a.zero_()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.prepare_network()

    def on_train_start(self):
        super().on_train_start()
        if self.solver == "gd":
            self.scale_step_size()
        if self.solver == "ridge":
            m = self.network.a.shape[1]
            K = self.network.a.shape[0]
            self.gram = torch.zeros(K, m, m, device=self.device, dtype=torch.float64)
            self.moment = torch.zeros(K, m, device=self.device, dtype=torch.float64)
            self.y_sq = torch.zeros(K, device=self.device, dtype=torch.float64)

    @torch.no_grad()
    def scale_step_size(self) -> None:
        """Per-replica gd step stage2.lr / (lambda_max(Phi^T Phi / n) + 2 beta2), applied by scaling
        each replica's gradient (the optimiser's lr is 1): one pass over D2."""
        gram = sum(torch.bmm(phi.transpose(1, 2), phi) for phi in
                   (self.network.features(x).double() for x, _ in self.trainer.datamodule.chunks("d2")))
        top = torch.linalg.eigvalsh(self.reduce_sum(gram) / self.n)[:, -1]
        self.step_sizes = (self.cfg.stage2.lr / (top + 2 * self.cfg.stage2.ridge)).to(self.network.a.dtype)
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = 1.0

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.solver == "ridge":
            self.accumulate_normal_equations(x, y)
        else:
            f = self.network(x)
            per_sample = self.loss(f, y)
            penalty = self.cfg.stage2.ridge * self.network.a.square().sum() / self.chunk_count
            self.manual_backward(per_sample.sum() * self.scale + penalty)  # DDP averages: penalty once
            self.loss_sum += per_sample.detach().sum(-1)
        if self.is_last_chunk(batch_idx):
            self.finish_pass()

    @torch.no_grad()
    def accumulate_normal_equations(self, x, y) -> None:
        phi = self.network.features(x).double()
        y = y.double()
        self.gram += torch.bmm(phi.transpose(1, 2), phi)
        self.moment += torch.bmm(phi.transpose(1, 2), y.unsqueeze(-1)).squeeze(-1)
        self.y_sq += y.square().sum(-1)

    def finish_pass(self) -> None:
        beta2 = self.cfg.stage2.ridge
        if self.solver == "ridge":
            gram, moment, y_sq = (self.reduce_sum(t) / self.n for t in (self.gram, self.moment, self.y_sq))
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            a = torch.linalg.solve(gram + 2 * beta2 * eye, moment)
            fit = 0.5 * (torch.einsum("ki,kij,kj->k", a, gram, a) - 2 * (a * moment).sum(-1) + y_sq)
            objective = fit + beta2 * a.square().sum(-1)
            with torch.no_grad():
                self.network.a.copy_(a.to(self.network.a.dtype))
        else:
            objective = self.reduce_sum(self.loss_sum) / self.n + beta2 * self.network.a.detach().square().sum(-1)
            self.loss_sum.zero_()
            optimizer = self.optimizers()
            if self.solver == "gd":
                self.network.a.grad.mul_(self.step_sizes.unsqueeze(-1))
            optimizer.step(closure=lambda: objective.sum())
            optimizer.zero_grad(set_to_none=False)
        self.last_loss = objective
        value = float(objective[0])  # one host sync per stage-2 pass (not the stage-1 hot path)
        if not torch.isfinite(objective).all() or not bool(torch.isfinite(self.network.a).all()):
            raise MimError(
                f"stage 2 diverged at step {self.current_epoch + 1}: the second-layer weights or the loss are "
                f"not finite; lower stage2.lr (now {self.cfg.stage2.lr}) or use stage2.solver=ridge with squared loss"
            )
        if self.logger is not None:
            self.logger.log_metrics({"stage2/loss": value}, step=self.current_epoch + 1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Carry stage 1's outputs, so that a run resumed in stage 2 needs no stage-1 state."""
        checkpoint["mim"] = {"stage": 2, "stage1": self.stage1_outputs, "last_loss": self.last_loss}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.stage1_outputs = checkpoint["mim"]["stage1"]
        self.last_loss = checkpoint["mim"]["last_loss"]

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_metric.update(self.network(x), y)

    def on_test_epoch_end(self):
        self.test_rel_mse = self.test_metric.compute().reshape(-1)  # torchmetrics squeezes K = 1
        self.test_metric.reset()
