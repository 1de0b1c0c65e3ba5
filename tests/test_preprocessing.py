"""Preprocessed losses: -loss'(0, y) = T(y), convexity, and the closed-form optimal preprocessing."""

import math

import torch

from mim_lightning.core.preprocessed_losses import optimal_sum_he2_loss, preprocessed_loss, sum_he2_preprocessing
from mim_lightning.core.spectral import label_preprocessing


def test_preprocessed_loss_has_the_requested_preprocessing():
    T = lambda y: torch.tanh(y) ** 3  # noqa: E731
    loss = preprocessed_loss(T)
    y = torch.linspace(-5, 5, 101)
    assert torch.allclose(label_preprocessing(loss, y), T(y), atol=1e-6)


def test_preprocessed_loss_is_convex_and_lipschitz_in_t():
    loss = preprocessed_loss(lambda y: y.clamp(-1, 1))
    t = torch.linspace(-50, 50, 2001, requires_grad=True)
    for yv in (-3.0, 0.0, 0.7, 3.0):
        y = torch.full_like(t, yv)
        (g,) = torch.autograd.grad(loss(t, y).sum(), t, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), t)
        assert h.min() >= 0
        assert g.abs().max() <= 2 + 1e-6


def test_optimal_sum_he2_preprocessing_matches_the_closed_form():
    """G(y) = E[z z^T - I | y] = (y / r) I for y = |z|^2 - r: check lambda(y) = y / r by binning, and
    T = lambda / (lambda + s) = y / (y + r s)."""
    r, s = 2, math.sqrt(2)
    z = torch.randn(400_000, r, generator=torch.Generator().manual_seed(0))
    y = (z * z).sum(-1) - r
    bins = torch.quantile(y, torch.linspace(0, 1, 11))
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (y >= lo) & (y < hi)
        lam = ((z[sel, 0] ** 2) - 1).mean()          # first diagonal entry of G(y) on the bin
        assert abs(lam - (y[sel] / r).mean()) < 0.02
    T = sum_he2_preprocessing(r, s)
    yy = torch.linspace(-1.99, 10, 50)
    assert torch.allclose(T(yy), (yy / r) / (yy / r + s))
    assert math.isclose(T(torch.tensor(-float(r), dtype=torch.float64)).item(), -1 / (s - 1), rel_tol=1e-12)  # its minimum
    assert torch.allclose(label_preprocessing(optimal_sum_he2_loss(r, s), yy), T(yy), atol=1e-6)
