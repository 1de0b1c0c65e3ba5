"""Label preprocessing, the label-weighted covariance and the spectral baseline."""

import pytest
import torch

from mim_lightning.plugins.builtins import losses
from mim_lightning.core.streams import make_split, random_subspace
from mim_lightning.plugins.builtins.links import sum_he2, z1z2
from mim_lightning.core.spectral import label_weighted_covariance, label_preprocessing, spectral_cosines, spectral_estimate

identity = lambda t: t  # noqa: E731


def test_preprocessing_of_builtin_losses():
    y = torch.linspace(-4, 4, 81)
    assert torch.allclose(label_preprocessing(losses.squared, y), y)
    assert torch.allclose(label_preprocessing(losses.huber, y), y.clamp(-1, 1))
    assert torch.allclose(label_preprocessing(losses.pseudo_huber, y), y / torch.sqrt(1 + y * y), atol=1e-6)
    assert torch.allclose(label_preprocessing(losses.logcosh, y), torch.tanh(y), atol=1e-6)


def sample(link, d, n, seed=0):
    U = random_subspace(seed, d, 2, "cpu")[None]
    x, y = make_split([seed], "d1", n, U, link, "link", 0.0, 0, 1, "cpu")
    return U, x, y


def test_population_matrix_of_z1z2_under_squared_loss():
    """E[y x x^T] restricted to U is [[0, 1], [1, 0]] for y = z1 z2 (T(y) = y), and ~0 elsewhere."""
    d, n = 8, 400_000
    U, x, y = sample(z1z2, d, n)
    sigma = label_weighted_covariance([(x, y)], identity, n, identity)[0]
    on_U = U[0] @ sigma @ U[0].T
    assert torch.allclose(on_U, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=0.03)
    off = sigma - U[0].T @ on_U @ U[0]
    assert off.abs().max() < 0.03


def test_spectral_estimate_orders():
    sigma = torch.diag(torch.tensor([3.0, -5.0, 1.0, 0.5]))[None]
    vecs, vals = spectral_estimate(sigma, 2, "magnitude")
    assert vals[0].tolist() == [-5.0, 3.0]
    vecs, vals = spectral_estimate(sigma, 2, "largest")
    assert vals[0].tolist() == [3.0, 1.0]
    assert torch.allclose(vecs[0].abs(), torch.eye(4)[[0, 2]])


def test_spectral_baseline_recovers_an_easy_instance_and_not_noise():
    d, n = 64, 64 * 64
    U, x, y = sample(sum_he2, d, n)
    shift = torch.zeros(1)
    cos = spectral_cosines([(x, y)], losses.squared, shift, n, U, identity)["magnitude"][0]
    assert cos.min() > 0.95
    noise = torch.randn_like(y)  # labels independent of x: nothing to find, overlap near chance
    cos = spectral_cosines([(x, noise)], losses.squared, shift, n, U, identity)["magnitude"][0]
    assert cos.max() < 0.6


def test_unbounded_fraction_counts_the_reachable_side():
    """Preprocessed loss sqrt(1 + t^2) - 1 - t T(y) with T(y) = y: after the shift, the objective
    falls without bound as t -> +inf where y - shift > 1 and as t -> -inf where y - shift < -1."""
    from mim_lightning.core.preprocessed_losses import preprocessed_loss
    from mim_lightning.core.spectral import unbounded_fraction

    y = torch.tensor([[-3.0, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 3.0]])
    loss = preprocessed_loss(lambda v: v)
    shift = torch.tensor([0.5])       # y - shift: -3.5 -2 -1 -0.5 0 1 2 2.5
    fraction = lambda sides: unbounded_fraction([(None, y)], loss, shift, 8, lambda t: t, sides=sides).item()  # noqa: E731
    assert fraction("up") == pytest.approx(2 / 8)      # 2 and 2.5 exceed 1
    assert fraction("down") == pytest.approx(2 / 8)    # -3.5 and -2 are below -1
    assert fraction("both") == pytest.approx(4 / 8)
