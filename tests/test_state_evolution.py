"""Bayes-optimal AMP state evolution (mim_lightning/core/state_evolution.py, issue 14)."""

import math

import numpy as np
import pytest
import torch

from mim_lightning.core.state_evolution import (DTYPE, RESOLUTION, _inspect, _setup, _update, bayes_optimal_overlap,
                                                 check_inputs)
from mim_lightning.errors import MimError


def he2(z):
    return z[..., 0] ** 2 - 1


def sum_he2(z):
    return (z * z - 1).sum(-1)


def z1z2(z):
    return z[..., 0] * z[..., 1]


LINKS = [("he2", he2, 1, 0.5), ("sum_he2", sum_he2, 2, 1.0), ("z1z2", z1z2, 2, 19 / 32)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CPU is shared: one thread keeps the timings of these tests stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name,link,r,exact", LINKS, ids=[x[0] for x in LINKS])
def test_linearised_threshold_is_alpha_c(name, link, r, exact):
    """1 / (top eigenvalue of the SE map's linearisation at Q = 0) = alpha_c: within 0.5% of the
    closed form (measured: he2 0.03%, sum_he2 0.3%, z1z2 0.3%, noiseless) and within 1% + its
    stated error of the project's spectral estimate."""
    from mim_lightning.analysis.theory import alpha_c_estimate

    ours = weak_recovery_threshold(link, r, noise=0.0)["alpha_c"]
    assert ours == pytest.approx(exact, rel=5e-3)
    theirs = alpha_c_estimate(link, r, n_samples=2**17)
    assert ours == pytest.approx(theirs["alpha_c"], rel=0.01 + theirs["error"])



def weak_recovery_threshold(link, r: int, noise: float = 0.01, *, eps: float = 1e-5, resolution=None) -> dict:
    """A cross-check of the state evolution's quadrature (the product's alpha_c is
    ``analysis.threshold.alpha_c_estimate``): the weak-recovery threshold of the state evolution at this (relative) noise, from its
    linearisation at Q = 0: Qhat(eps M) / (alpha eps) -> L(M) = E_y[G(y) M G(y)], G(y) = E[z z^T - I | y]
    (M on the PSD basis e_k e_k^T, (e_k + e_l)(e_k + e_l)^T), alpha_c = 1 / (top eigenvalue of L);
    0 when Qhat(0) != 0 (E[z | y] != 0: a linear part is seen at any alpha). Same quadrature as
    ``bayes_optimal_overlap`` (omega spacing 1.0); noiseless error vs the exact alpha_c: he2 0.03%,
    sum_he2 and z1z2 (r = 2) 0.3%, sum_he2 (r = 3) 2.3%, always above it (the quadrature loses a
    little information). Returns ``alpha_c``, ``top``, ``noise`` (absolute), ``noise_relative``."""
    r, _, noise = check_inputs(link, r, [1.0], noise)
    s = _setup(r, tuple(resolution) if resolution is not None else RESOLUTION[r])
    sigma = noise * _inspect(link, s)
    eye = torch.eye(r, dtype=DTYPE)

    def qhat(m):
        return _update(link, eps * m, eye - eps * m, 1.0, sigma, s, 1)[2]

    base = qhat(torch.zeros(r, r, dtype=DTYPE))
    if float(torch.linalg.eigvalsh(base).max()) > 10 * eps:  # first-order signal: recovery at any alpha
        return dict(alpha_c=0.0, top=math.inf, noise=sigma, noise_relative=noise)
    pairs = [(k, k) for k in range(r)] + [(k, l) for k in range(r) for l in range(k + 1, r)]
    diag = [qhat(torch.outer(eye[k], eye[k])) / eps for k in range(r)]
    cols = []
    for k, l in pairs:
        img = diag[k] if k == l else qhat(torch.outer(eye[k] + eye[l], eye[k] + eye[l])) / eps - diag[k] - diag[l]
        cols.append([float(img[i, j]) for i, j in pairs])  # coordinates of L(E_kl + E_lk) (or E_kk)
    top = float(np.max(np.linalg.eigvals(np.array(cols).T).real))
    return dict(alpha_c=1 / top if top > 0 else math.inf, top=top, noise=sigma, noise_relative=noise)


def test_onset_at_alpha_c_he2():
    """he2 (alpha_c = 1/2): from Q_0 = 1e-3, Q decays to ~0 at alpha = 0.45 and grows at 0.55."""
    out = bayes_optimal_overlap(he2, 1, [0.45, 0.55], noise=0.0)
    assert all(out["converged"])
    below, above = out["eigenvalues"]
    assert below[0] < 1e-4  # decays to ~0 (stops once |Q_new - Q| < tol = 1e-6)
    assert above[0] > 1e-2
    assert out["cosines"][1][0] == pytest.approx(math.sqrt(above[0]))


def test_onset_and_symmetry_sum_he2():
    """sum_he2, r = 2 (alpha_c = 1): Q ~ 0 at alpha = 0.85; Q = q I at 1.2 (off-diagonal and
    diagonal difference ~0, to the iteration tolerance)."""
    out = bayes_optimal_overlap(sum_he2, 2, [0.85, 1.2], noise=0.0)
    assert all(out["converged"])
    assert max(out["eigenvalues"][0]) < 1e-4
    q = torch.tensor(out["Q"][1])
    assert q[0, 0] > 0.05
    assert abs(q[0, 1]) < 1e-6 and abs(q[0, 0] - q[1, 1]) < 1e-6
    # a finer resolution, (49, 2048, 0.25), gives q = 0.08408; the stated error is conservative
    assert abs(q[0, 0] - 0.08408) < out["error"][1] < 0.2 * q[0, 0]
    assert out["z_mse"][1] == pytest.approx(2 - 2 * q[0, 0])


def test_z1z2_onset():
    """z1z2 (alpha_c = 19/32): Q ~ 0 at alpha = 0.5, both directions grow at 0.7."""
    out = bayes_optimal_overlap(z1z2, 2, [0.5, 0.7], noise=0.0, error_estimate=False)
    assert max(out["eigenvalues"][0]) < 1e-4
    assert min(out["eigenvalues"][1]) > 0.02  # alpha_c = 19/32: both directions grow alike


def test_he2_perfect_recovery_near_1_13():
    """Noiseless he2 (real phase retrieval, Gaussian prior): AMP reaches Q = 1 from alpha_alg
    ~ 1.13 (Barbier et al., PNAS 2019); measured 1.1287 +- 0.0002 (bisection, default resolution).
    A coarser resolution keeps this fast; the warm start must give the same fixed points."""
    coarse = (101, 2048, 0.12)
    out = bayes_optimal_overlap(he2, 1, [1.16, 1.1], 0.0, warm_start=True, error_estimate=False, resolution=coarse)
    assert all(out["converged"])
    assert 0.6 < out["eigenvalues"][1][0] < 0.8  # 0.6907 (exact 1-d SE of he2)
    assert out["eigenvalues"][0][0] > 0.999
    assert out["label_mse"][0] < 1e-3 < out["label_mse"][1]


def test_small_noise_limit():
    """Away from the transitions the overlap at noise 0.01 and 0.03 (relative to std g) agree with
    the noiseless one within 1e-3 and 3e-3."""
    outs = {x: bayes_optimal_overlap(he2, 1, [0.8], noise=x, error_estimate=False) for x in (0.0, 0.01, 0.03)}
    q = {noise: out["eigenvalues"][0][0] for noise, out in outs.items()}
    assert 0.1 < q[0.0] < 0.3
    assert abs(q[0.01] - q[0.0]) < 1e-3
    assert abs(q[0.03] - q[0.0]) < 3e-3
    assert outs[0.01]["noise"] == pytest.approx(0.01 * math.sqrt(2), rel=1e-3)
    assert outs[0.0]["label_mse"][0] < 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(r=4), "r must be 1, 2 or 3"),
        (dict(alphas=[0.5, -1.0]), "alphas must be"),
        (dict(alphas=[]), "alphas must be"),
        (dict(noise=-0.1), "noise must be"),
        (dict(noise=float("nan")), "noise must be"),
        (dict(link="he2"), "link must be a callable"),
        (dict(link=lambda z: z), "link must map"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(link=he2, r=1, alphas=[0.5], noise=0.01) | kwargs
    with pytest.raises(MimError, match=match):
        bayes_optimal_overlap(**args)
