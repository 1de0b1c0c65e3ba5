"""Metrics against closed forms: principal angles of known subspaces, subspace mass, relative MSE."""

import math

import pytest
import torch

from mim_lightning.core.measures import frobenius, principal_cosines, subspace_mass, top_right_singular
from mim_lightning.training.metrics import RelativeMSE


def rotated_pair(d, angles):
    """U = first r basis vectors; Q_k = cos(t_k) e_k + sin(t_k) e_{r+k}: principal cosines cos(t_k)."""
    r = len(angles)
    U = torch.eye(d)[:r]
    Q = torch.zeros(r, d)
    for k, t in enumerate(angles):
        Q[k, k], Q[k, r + k] = math.cos(t), math.sin(t)
    return U, Q


def test_principal_cosines_of_known_angles():
    angles = [0.3, 1.1, 0.7]
    U, Q = rotated_pair(20, angles)
    rot = torch.linalg.qr(torch.randn(3, 3))[0]           # any basis of the same span
    got = principal_cosines((rot @ Q)[None], U[None])[0]
    want = sorted((math.cos(t) for t in angles), reverse=True)
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("m", [8, 64])  # Gram in the smaller dimension: m < d and m > d
def test_network_cosines_find_the_row_space_of_W(m):
    angles = [0.2, 0.9]
    U, Q = rotated_pair(32, angles)
    torch.manual_seed(0)
    W = torch.randn(m, 2) @ Q * 1e-7                       # rank 2, tiny scale
    got = principal_cosines(top_right_singular(W[None], 2), U[None])[0]
    assert torch.allclose(got, torch.tensor([math.cos(0.2), math.cos(0.9)]), atol=1e-5)


def test_top_right_singular_matches_svd():
    torch.manual_seed(1)
    W = torch.randn(2, 40, 30) * torch.linspace(3, 0.1, 30)
    Q = top_right_singular(W, 3)
    Vh = torch.linalg.svd(W, full_matrices=False).Vh[:, :3]
    cos = principal_cosines(Q, Vh)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_subspace_mass_closed_form():
    d = 10
    U = torch.eye(d)[:2][None]
    W = torch.zeros(1, 3, d)
    W[0, 0, 0], W[0, 0, 5] = 3.0, 4.0     # 9 inside, 16 outside
    W[0, 1, 1] = 1.0                      # 1 inside
    W[0, 2, 7] = 2.0                      # 4 outside
    assert subspace_mass(W, U).item() == pytest.approx(10 / 30)


def test_relative_mse_over_chunks_equals_direct():
    torch.manual_seed(3)
    y = torch.randn(2, 1000) * 3 + 1
    f = y + torch.randn(2, 1000)
    metric = RelativeMSE(2)
    for i in range(0, 1000, 300):
        metric.update(f[:, i:i + 300], y[:, i:i + 300])
    want = ((f - y) ** 2).mean(-1) / y.var(-1, unbiased=False)
    assert torch.allclose(metric.compute().float(), want, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-25, 1e-12, 1.0, 1e16, 1e25])
def test_frobenius_is_exact_at_every_scale(scale):
    """Float32 squares underflow (tiny stage-1 weights) or overflow: the norm must not."""
    W = torch.randn(3, 20, 30, generator=torch.Generator().manual_seed(0)) * scale
    want = W.double().flatten(1).norm(dim=1)
    got = frobenius(W)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
