"""The two stages of layer-wise training as LightningModules: optimisation only.

A stage is driven by ``training.loop`` on Lightning Fabric: one full-batch gradient step is one
pass over this rank's chunks of the data; ``training_step`` returns a chunk's share of the
objective, which the loop differentiates (outside DDP's forward, so DDP's reducer sees it). Each chunk's loss is normalised by the global sample
count times the world size (DDP averages gradients over ranks, which divides it back out), so
gradients accumulated over chunks and ranks are exactly the full-batch gradient. Metrics,
divergence checks and checkpoints are callbacks (``training.callbacks``).
"""

from __future__ import annotations

from typing import Callable

import mim_lightning.training.lean_imports  # noqa: F401  (before Lightning: no unused metric back-ends)
import lightning as L
import torch

from mim_lightning.config import Config
from mim_lightning.core.network import TwoLayerNetwork
from mim_lightning.core.streams import generator
from mim_lightning.errors import MimError


class _FullBatchModule(L.LightningModule):
    """Shared plumbing: the trained parameters, the loss normalisation and sums over ranks."""

    trained: tuple[str, ...] = ("W",)

    def __init__(self, network: TwoLayerNetwork, loss: Callable, n: int, world: int, reduce_sum: Callable):
        super().__init__()
        self.automatic_optimization = False
        self.network, self.loss = network, loss
        self.n, self.scale, self.reduce_sum = n, world / n, reduce_sum
        self.loss_sum = None
        self.last_loss = None   # (K,) the objective of the last completed pass
        self.stage_optimizer = None   # the stage's optimiser once the loop has set it up (checkpoints save it)

    def select_trained(self) -> None:
        """Only the stage's layer requires grad (before DDP wraps the module, so DDP synchronises
        exactly that layer's gradient)."""
        for name, parameter in self.network.named_parameters():
            parameter.requires_grad_(name in self.trained)

    def differentiable(self, objective: torch.Tensor, key: str, name: str) -> torch.Tensor:
        """The chunk's objective, refused when autograd cannot differentiate it (a loss that
        passed the probe on small inputs but detaches on the training data)."""
        if not objective.requires_grad:
            raise MimError(f"{key} {name!r} returned values with no gradient on the training data (detached from "
                           f"autograd); a loss must stay differentiable in t for every input")
        return objective

    def accumulate_loss(self, per_sample: torch.Tensor) -> None:
        """Sum the chunk's per-sample losses in float64: a float32 sum of n values near the loss of
        the zero predictor jitters by its last bit, which is all stage 1 changes while W is small."""
        with torch.no_grad():   # (no detach: one op fewer per chunk)
            part = per_sample.sum(-1, dtype=torch.float64)
        self.loss_sum = part if self.loss_sum is None else self.loss_sum + part

    def pass_mean_loss(self) -> torch.Tensor:
        """(1/n) sum of the per-sample losses of the pass, over all ranks; resets the sum."""
        total, self.loss_sum = self.loss_sum, None
        return self.reduce_sum(total) / self.n


class Stage1Module(_FullBatchModule):
    """Full-batch GD on the first layer only: W <- W - eta1 (grad_W Lhat_D1 + beta1 W).

    With ``shift`` = mean_D1(T) (``stage1.center``) the loss is loss(t, y) + shift * t, so that
    -loss'(0, y) = T(y) - mean(T).
    """

    def __init__(self, network: TwoLayerNetwork, loss: Callable, cfg: Config, n: int, world: int,
                 reduce_sum: Callable, shift: torch.Tensor, U: torch.Tensor | None = None):
        super().__init__(network, loss, n, world, reduce_sum)
        self.cfg, self.shift = cfg, shift
        self.U = U   # (K, r, d): the hidden subspace, which the stage-1 metrics measure W against

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

    def training_step(self, batch, batch_idx):
        """One chunk's share of the full-batch objective (the loop differentiates it)."""
        x, y = batch
        f = self.network(x)
        per_sample = self.loss(f, y) + self.shift.unsqueeze(-1) * f
        self.accumulate_loss(per_sample)
        return self.differentiable(per_sample.sum() * self.scale, "stage1.loss", self.cfg.stage1.loss)

    def finish_step(self, optimizer) -> None:
        """The step, and ``last_loss``: the objective it descended, at the weights before it,
        (1/n) sum_i [loss(f(x_i), y_i) + shift f(x_i)] + (beta1 / 2) |W|_F^2 per replica (SGD's
        weight decay is the gradient of the last term)."""
        decay = self.cfg.stage1.weight_decay
        with torch.no_grad():   # |W|_F per replica before the step, in float64
            norm = torch.linalg.vector_norm(self.network.W, dim=(1, 2), dtype=torch.float64) if decay else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        loss = self.pass_mean_loss()
        self.last_loss = loss if norm is None else torch.addcmul(loss, norm, norm, value=0.5 * decay)


class Stage2Module(_FullBatchModule):
    """The convex second-layer fit on D2 with W fixed:
    min_a (1/n2) sum_i loss(sum_j a_j sigma(w_j . x_i + b_j), y_i) + beta2 |a|^2.

    Before the fit (``prepare_network``): biases re-initialised (normal / uniform / zero, scale s),
    rows of W optionally rescaled to unit norm, a set to 0. Solvers: "ridge" solves the normal
    equations of the squared loss 0.5 (t - y)^2 exactly, (Phi^T Phi / n + 2 beta2 I) a = Phi^T y / n,
    summed over chunks and ranks in one pass; "gd" and "lbfgs" take one full-batch step per pass.
    The gd step is stage2.lr / L with L = lambda_max(Phi^T Phi / n) + 2 beta2, the smoothness
    constant for losses with loss'' <= 1 (all built-ins), so stage2.lr < 2 converges.
    """

    trained = ("a",)

    def __init__(self, network: TwoLayerNetwork, loss: Callable, cfg: Config, n: int, world: int,
                 reduce_sum: Callable, solver: str, seeds):
        super().__init__(network, loss, n, world, reduce_sum)
        self.cfg, self.solver, self.seeds = cfg, solver, list(seeds)
        self.step_sizes = None
        self.normal_equations = None

    def configure_optimizers(self):
        s2 = self.cfg.stage2
        if self.solver == "lbfgs":
            return torch.optim.LBFGS([self.network.a], lr=s2.lr, max_iter=1, history_size=20)
        return torch.optim.SGD([self.network.a], lr=1.0 if self.solver == "gd" else s2.lr)

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

    @torch.no_grad()
    def scale_step_size(self, chunks) -> None:
        """Per-replica gd step stage2.lr / (lambda_max(Phi^T Phi / n) + 2 beta2), applied by scaling
        each replica's gradient (the optimiser's lr is 1): one pass over D2."""
        gram = sum(torch.bmm(phi.transpose(1, 2), phi) for phi in (self.network.features(x).double() for x, _ in chunks))
        top = torch.linalg.eigvalsh(self.reduce_sum(gram) / self.n)[:, -1]
        self.step_sizes = (self.cfg.stage2.lr / (top + 2 * self.cfg.stage2.ridge)).to(self.network.a.dtype)

    def training_step(self, batch, batch_idx):
        """One chunk's share of the data term (gd, lbfgs), or its part of the normal equations
        (ridge: nothing to differentiate, returns None)."""
        x, y = batch
        if self.solver == "ridge":
            self.accumulate_normal_equations(x, y)
            return None
        per_sample = self.loss(self.network(x), y)
        self.accumulate_loss(per_sample)
        return self.differentiable(per_sample.sum() * self.scale, "stage2.loss", self.cfg.stage2.loss)

    @torch.no_grad()
    def accumulate_normal_equations(self, x, y) -> None:
        """Sums of Phi^T Phi, Phi^T y and y^2 over the chunks of this rank."""
        phi, y = self.network.features(x).double(), y.double()
        parts = (torch.bmm(phi.transpose(1, 2), phi), torch.bmm(phi.transpose(1, 2), y.unsqueeze(-1)).squeeze(-1),
                 y.square().sum(-1))
        sums = self.normal_equations
        self.normal_equations = parts if sums is None else tuple(s + p for s, p in zip(sums, parts, strict=True))

    def finish_step(self, optimizer) -> None:
        """Solve (ridge) or take the optimiser step (gd, lbfgs) after a full pass; the objective of
        the pass, including beta2 |a|^2, goes to ``last_loss``."""
        beta2, a = self.cfg.stage2.ridge, self.network.a
        if self.solver == "ridge":
            gram, moment, y_sq = (self.reduce_sum(t) / self.n for t in self.normal_equations)
            self.normal_equations = None
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            solution = torch.linalg.solve(gram + 2 * beta2 * eye, moment)
            fit = 0.5 * (torch.einsum("ki,kij,kj->k", solution, gram, solution) - 2 * (solution * moment).sum(-1) + y_sq)
            self.last_loss = fit + beta2 * solution.square().sum(-1)
            with torch.no_grad():
                a.copy_(solution.to(a.dtype))
            return
        with torch.no_grad():  # the penalty's gradient 2 beta2 a, once (not averaged over ranks)
            a.grad.add_(a.detach(), alpha=2 * beta2)
        objective = self.pass_mean_loss() + beta2 * a.detach().square().sum(-1)
        if self.solver == "gd":
            a.grad.mul_(self.step_sizes.unsqueeze(-1))
        optimizer.step(closure=lambda: objective.sum())
        optimizer.zero_grad(set_to_none=False)
        self.last_loss = objective
