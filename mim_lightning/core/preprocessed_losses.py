"""Losses built from a label preprocessing T: stage 1 sees the labels only through T(y) = -loss'(0, y).

``preprocessed_loss(T)`` is loss(t, y) = sqrt(1 + t^2) - 1 - t T(y): convex in t, C^1, and
(1 + sup|T|)-Lipschitz in t, with -loss'(0, y) = T(y) exactly. Its minimiser in t is
T / sqrt(1 - T^2), not y, so it is a stage-1 loss; fit stage 2 with a regression loss.

The optimal preprocessing (docs/theory.md#the-optimal-spectral-threshold) has a closed form when
G(y) = E[z z^T - I | y] is a multiple of the identity, as for y = sum_k (z_k^2 - 1) (``sum_he2``;
r = 1 is ``he2``):
|z|^2 = y + r is chi-square with r degrees of freedom, so G(y) = (y / r) I and
T(y) = lambda(y) / (lambda(y) + s) = y / (y + r s). s = 1 is the weak-recovery-optimal choice
(but T is then unbounded below as y -> -r); above the threshold s = sqrt(alpha / alpha_c) is
the optimal one (Mondelli & Montanari's phase-retrieval preprocessing, per direction), and it is
bounded: T >= -1 / (s - 1). For s < 2 that bound is below -1, and the loss is unbounded below in t
on the samples with T(y) < -1 (a quarter of them for r = 2, s = sqrt(2); see
docs/theory.md#preprocessed-losses).
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def preprocessed_loss(T: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """The convex, Lipschitz loss with label preprocessing T: sqrt(1 + t^2) - 1 - t T(y)."""

    def loss(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1 + t * t) - 1 - t * T(y)

    loss.__doc__ = f"sqrt(1 + t^2) - 1 - t T(y) with T = {getattr(T, '__name__', 'a label transform')}"
    return loss


def sum_he2_preprocessing(r: int, s: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """T(y) = y / (y + r s), the optimal preprocessing of sum_he2 on r coordinates at
    s = sqrt(alpha / alpha_c) (y > -r always, so T is finite for s >= 1 and bounded for s > 1)."""

    def transform(y: torch.Tensor) -> torch.Tensor:
        return y / (y + r * s)

    transform.__name__ = f"y / (y + {r} * {s:.4g})"
    return transform


DESIGN_RATIO = math.sqrt(2.0)  # the built-in optimal losses are tuned for alpha = 2 alpha_c


def optimal_sum_he2_loss(r: int, s: float = DESIGN_RATIO) -> Callable:
    """The preprocessed loss with the optimal preprocessing of sum_he2 on r coordinates."""
    return preprocessed_loss(sum_he2_preprocessing(r, s))
