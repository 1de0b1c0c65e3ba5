"""torchmetrics metrics of a run, reduced over chunks and DDP ranks through ``dist_reduce_fx``."""

from __future__ import annotations

import torch
import mim_lightning.training.lean_imports  # noqa: F401  (before Lightning: no unused metric back-ends)
from torchmetrics import Metric


class RelativeMSE(Metric):
    """mean((f - y)^2) / Var(y) per replica, accumulated over chunks and ranks (sums of moments)."""

    full_state_update = False

    def __init__(self, replicas: int = 1, **kwargs):
        super().__init__(**kwargs)
        for name in ("sq_error", "y_sum", "y_sq_sum", "count"):
            self.add_state(name, torch.zeros(replicas, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """prediction, target: (K, n)."""
        prediction, target = prediction.double(), target.double()
        self.sq_error += (prediction - target).square().sum(-1)
        self.y_sum += target.sum(-1)
        self.y_sq_sum += target.square().sum(-1)
        self.count += target.shape[-1]

    def compute(self) -> torch.Tensor:
        mean = self.y_sum / self.count
        variance = self.y_sq_sum / self.count - mean.square()
        return (self.sq_error / self.count) / variance
