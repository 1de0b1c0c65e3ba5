"""Population matrix, Hermite degree and alpha_c against closed forms (docs/theory.md#the-population-matrix-m,
docs/theory.md#closed-forms)."""

import json
import math

import numpy as np
import pytest
import torch

from mim_lightning.analysis import theory
from mim_lightning.errors import MimError


# ----------------------------------------------------------------------------- population matrix


def test_population_matrix_z1z2_squared():
    # squared loss: loss'(0, y) = -y, M = -E[z1 z2 (z z^T - I)] = -[[0, 1], [1, 0]]
    m, error = theory.population_matrix("z1z2", "squared", 2)
    assert np.allclose(m, -np.array([[0.0, 1.0], [1.0, 0.0]]), atol=1e-6)
    assert error < 1e-6


@pytest.mark.parametrize("r", [1, 2, 3])
def test_population_matrix_sum_he2_squared(r):
    m, _ = theory.population_matrix("sum_he2", "squared", r)
    assert np.allclose(m, -2 * np.eye(r), atol=1e-6)


def test_population_matrix_linear_he2():
    m, _ = theory.population_matrix("linear_he2", "squared", 2)
    assert np.allclose(m, np.diag([0.0, -2.0]), atol=1e-9)
    m, error = theory.population_matrix("linear_he2", "even_tanh_sq", 2)
    eig = np.abs(np.linalg.eigvalsh(m))
    assert eig.min() > 0.1 and error < 1e-4


def test_population_matrix_huber_matches_exact_value():
    # he2, r = 1, Huber: M = -E[clip(z^2 - 1, -1, 1) (z^2 - 1)], computed with mpmath to 25 digits.
    exact = -0.855186591058240332
    moments = theory.population_moments("he2", "huber", 1)
    assert abs(moments["M"][0, 0] - exact) <= moments["error"] < 2e-4
    # the isotropic part E[loss'(0, y)] = -E[clip(y)] for y = z^2 - 1
    assert moments["isotropic"] > 0


def test_population_matrix_accepts_callables_and_monte_carlo_for_large_r():
    m, error = theory.population_matrix(lambda z: z[..., 0] * z[..., 1], lambda t, y: 0.5 * (t - y) ** 2, 2)
    assert np.allclose(m, [[0, -1], [-1, 0]], atol=1e-9)
    m, error = theory.population_matrix("sum_he2", "squared", 7)  # beyond the quadrature grids
    assert np.abs(m + 2 * np.eye(7)).max() <= error < 0.05


def test_population_matrix_bad_inputs():
    with pytest.raises(MimError, match="unknown link 'nope'"):
        theory.population_matrix("nope", "squared", 2)
    with pytest.raises(MimError, match="unknown loss"):
        theory.population_matrix("z1z2", "nope", 2)
    with pytest.raises(MimError, match=r"link 'z1z2' needs r >= 2 \(its min_r\), got r = 1"):
        theory.population_matrix("z1z2", "squared", 1)
    with pytest.raises(MimError, match="positive integer"):
        theory.population_matrix("he2", "squared", 0)
    with pytest.raises(MimError, match="shape"):
        theory.population_matrix(lambda z: z, "squared", 2)


# ----------------------------------------------------------------------------- Hermite degree


@pytest.mark.parametrize("link", ["z1z2", "sum_he2", "he2", "staircase", "linear_he2"])
def test_hermite_degree_of_quadratic_links(link):
    h = theory.hermite_degree(link, 2)
    assert h["degree"] == 2 and h["residual"] < 1e-12 and h["declared_degree"] == 2


def test_hermite_degree_other_cases():
    he3 = theory.hermite_degree(lambda z: z[..., 0] ** 3 - 3 * z[..., 0], 1)
    assert he3["degree"] == 3 and he3["energy"][3] == pytest.approx(6.0)  # E[He3^2] = 3! = 6
    tanh = theory.hermite_degree("tanh_sum", 2)
    assert tanh["residual"] > 1e-3 and tanh["degree"] == tanh["cap"]
    assert theory.hermite_degree(lambda z: 0 * z[..., 0] + 1, 1)["degree"] == 0
    big = theory.hermite_degree("sum_he2", 7)  # smaller cap, still a tensor grid
    assert big["degree"] == 2 and big["residual"] < 1e-10 and big["cap"] < 6


# ----------------------------------------------------------------------------- alpha_c


def _z1z2_inverse_alpha():
    """1/alpha_c for y = z1 z2 from the closed form, by an independent 1-d integral.

    Rotating to u = (z1 + z2)/sqrt2, v = (z1 - z2)/sqrt2 gives y = (u^2 - v^2)/2 and
    E[z1^2 + z2^2 | y] = 2 |y| K1(|y|) / K0(|y|), E[z1 z2 | y] = y, so
    G(y) = [[g, y], [y, g]] with g = |y| K1 / K0 - 1, eigenvectors (1, +-1)/sqrt2 for every y, and
    1/alpha_c = max(E[(g + y)^2], E[(g - y)^2], E[g^2 - y^2]) = 1 + E[g^2], y ~ K0(|y|)/pi.
    K_nu(x) = int_0^inf exp(-x cosh t) cosh(nu t) dt (trapezoid), y = e^s (trapezoid in s).
    """
    t = np.linspace(0, 40, 2001)
    s = np.linspace(-30, 4.5, 1151)
    y = np.exp(s)
    kernel = np.exp(-y[:, None] * np.cosh(t)[None, :])
    k0 = np.trapezoid(kernel, t, axis=1)
    k1 = np.trapezoid(kernel * np.cosh(t)[None, :], t, axis=1)
    g = y * k1 / k0 - 1
    return 1 + 2 / np.pi * np.trapezoid(g**2 * k0 * y, s)


def test_z1z2_closed_form_reference():
    # mpmath (50 digits) gives 1.684207411142628
    assert _z1z2_inverse_alpha() == pytest.approx(1.684207411142628, rel=1e-9)


@pytest.mark.parametrize(
    "link, r, expected",
    [
        ("he2", 1, 0.5),  # G(y) = y, 1/alpha_c = E[y^2] = 2
        ("sum_he2", 2, 1.0),  # G(y) = (y/2) I, 1/alpha_c = E[y^2]/4 = 1
        ("sum_he2", 3, 1.5),  # G(y) = (y/3) I, 1/alpha_c = E[y^2]/9 = 6/9
        ("z1z2", 2, 1 / 1.684207411142628),
        ("he2", 2, 0.5),  # an unused direction changes nothing
    ],
)
def test_alpha_c_closed_forms(link, r, expected):
    est = theory.alpha_c_estimate(link, r, n_samples=2**20, n_bins=100)  # half the default, for speed
    assert est["alpha_c"] == pytest.approx(expected, rel=2e-3)
    assert abs(est["alpha_c"] / expected - 1) <= est["error"] + 1e-4
    assert est["error"] < 0.01


def test_alpha_c_discrete_labels_use_level_sets():
    # y = sign(z1 z2): G = y (2/pi) [[0, 1], [1, 0]], L(M) = (4/pi^2) s M s, 1/alpha_c = 4/pi^2
    est = theory.alpha_c_estimate(lambda z: torch.sign(z[..., 0] * z[..., 1]), 2, n_samples=2**20)
    assert "level sets" in est["method"]
    assert est["alpha_c"] == pytest.approx(math.pi**2 / 4, rel=2e-3)


def test_alpha_c_invariant_under_invertible_label_maps():
    # tanh is invertible: y = tanh(sum_he2) carries the same information as sum_he2
    tanh_sum, sum_he2 = (
        theory.alpha_c_estimate(link, 2, n_samples=2**20, n_bins=100) for link in ("tanh_sum", "sum_he2")
    )
    assert tanh_sum["alpha_c"] == pytest.approx(sum_he2["alpha_c"], rel=2e-3)


def test_alpha_c_convergence_study():
    # No closed form for the staircase: estimates at growing (samples, bins) agree to well within
    # 1% and each reported error covers the distance to the finest one.
    coarse = theory.alpha_c_estimate("staircase", 2, n_samples=2**17, n_bins=25)
    middle = theory.alpha_c_estimate("staircase", 2, n_samples=2**18, n_bins=50)
    fine = theory.alpha_c_estimate("staircase", 2, n_samples=2**20, n_bins=100)
    assert fine["error"] < 0.005
    for est in (coarse, middle):
        gap = abs(est["alpha_c"] / fine["alpha_c"] - 1)
        assert gap < 0.005 and gap <= est["error"] + fine["error"]
    assert coarse["error"] > middle["error"] > fine["error"]


def test_theory_report_is_json():
    report = theory.theory_report("z1z2", 2)  # alpha_c at the default accuracy
    assert report["alpha_c_error"] < 0.005
    assert json.loads(json.dumps(report)) == report
    assert report["loss"] == "squared" and report["hermite_degree"] == 2
    assert sorted(report["eigenvalues"]) == pytest.approx([-1.0, 1.0])
    assert report["alpha_c"] == pytest.approx(0.5937511, rel=2e-3)
    report["M"][0][0] = 99.0  # callers may mutate: the cache is not affected
    assert theory.theory_report("z1z2", 2)["M"][0][0] == pytest.approx(0.0, abs=1e-12)
