"""The two-layer network f(x) = sum_j a_j sigma(w_j . x + b_j), for K replicas at once."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from mim_lightning.core.streams import generator


class TwoLayerNetwork(nn.Module):
    """K independent networks of width m on R^d: W (K, m, d), b (K, m), a (K, m).

    Initialisation (docs/theory.md#network): symmetric pairs w_j = w_{j+m/2}, a_j = -a_{j+m/2} = 1,
    so f = 0; rows of W have norm ~ init_scale (entries N(0, init_scale^2 / d)); biases 0.
    ``signs`` "positive" / "negative" instead gives every neuron a_j = +1 / -1 and its own row:
    stage 1 then amplifies one sign of the spectrum (when eta1 * beta1 < 1) instead of both.
    """

    def __init__(self, seeds, width: int, d: int, activation: Callable, init_scale: float, device=None,
                 signs: str = "pairs"):
        super().__init__()
        K = len(seeds)
        rows = []
        for seed in seeds:
            g = generator(seed, "init", torch.device(device or "cpu"))
            count = width // 2 if signs == "pairs" else width
            rows.append(torch.randn(count, d, generator=g, device=device) * (init_scale / math.sqrt(d)))
        W = torch.stack(rows)
        if signs == "pairs":
            half = width // 2
            W = torch.cat([W, W], dim=1)
            a = torch.cat([torch.ones(half, device=device), -torch.ones(half, device=device)])
        else:
            a = torch.full((width,), 1.0 if signs == "positive" else -1.0, device=device)
        self.W = nn.Parameter(W)
        self.b = nn.Parameter(torch.zeros(K, width, device=device), requires_grad=False)
        self.a = nn.Parameter(a.expand(K, width).clone(), requires_grad=False)
        self.activation = activation

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """h = x W^T + b: (K, n, d) -> (K, n, m)."""
        return torch.baddbmm(self.b.unsqueeze(1), x, self.W.transpose(1, 2))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """sigma(x W^T + b): (K, n, d) -> (K, n, m), in the dtype of x (an activation may compute in
        float64)."""
        h = self.preactivation(x)
        return self.activation(h).to(h.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = sigma(x W^T + b) a: (K, n, d) -> (K, n)."""
        return torch.bmm(self.features(x), self.a.unsqueeze(-1)).squeeze(-1)
