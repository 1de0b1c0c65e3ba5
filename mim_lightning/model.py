"""The two-layer network f(x) = sum_j a_j sigma(w_j . x + b_j), for K replicas at once."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from mim_lightning.data import generator


class TwoLayerNetwork(nn.Module):
    """K independent networks of width m on R^d: W (K, m, d), b (K, m), a (K, m).

    Initialisation (SCIENCE.md section 2): symmetric pairs w_j = w_{j+m/2}, a_j = -a_{j+m/2} = 1,
    so f = 0; rows of W have norm ~ init_scale (entries N(0, init_scale^2 / d)); biases 0.
    """

    def __init__(self, seeds, width: int, d: int, activation: Callable, init_scale: float, device=None):
        super().__init__()
        half = width // 2
        rows = []
        for seed in seeds:
            g = generator(seed, "init", torch.device(device or "cpu"))
            rows.append(torch.randn(half, d, generator=g, device=device) * (init_scale / math.sqrt(d)))
        w_half = torch.stack(rows)
        K = len(rows)
        self.W = nn.Parameter(torch.cat([w_half, w_half], dim=1))
        self.b = nn.Parameter(torch.zeros(K, width, device=device), requires_grad=False)
        signs = torch.cat([torch.ones(half, device=device), -torch.ones(half, device=device)])
        self.a = nn.Parameter(signs.expand(K, width).clone(), requires_grad=False)
        self.activation = activation

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """h = x W^T + b: (K, n, d) -> (K, n, m)."""
        return torch.baddbmm(self.b.unsqueeze(1), x, self.W.transpose(1, 2))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """sigma(x W^T + b): (K, n, d) -> (K, n, m)."""
        return self.activation(self.preactivation(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = sigma(x W^T + b) a: (K, n, d) -> (K, n)."""
        return torch.bmm(self.features(x), self.a.unsqueeze(-1)).squeeze(-1)
