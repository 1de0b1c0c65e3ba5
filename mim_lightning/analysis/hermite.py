"""The probabilists' Hermite expansion of a link up to a total-degree cap: its degree and the
variance beyond the cap (Assumption 1, docs/theory.md#assumption-1-polynomial-link)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss

from mim_lightning.analysis.common import (
    DTYPE,
    HERMITE_BASIS_BUDGET,
    HERMITE_CAP,
    HERMITE_GRID_BUDGET,
    HERMITE_RESIDUAL_TOL,
    HERMITE_TOL,
    check_r,
    eval_link,
    memoize,
    resolve,
)

def _hermite_table(x: np.ndarray, cap: int) -> np.ndarray:
    """Normalised probabilists' Hermite He_k(x) / sqrt(k!) for k = 0..cap: shape (len(x), cap+1)."""
    h = np.zeros((len(x), cap + 1))
    h[:, 0] = 1.0
    if cap >= 1:
        h[:, 1] = x
    for k in range(1, cap):  # He_{k+1} = x He_k - k He_{k-1}
        h[:, k + 1] = x * h[:, k] - k * h[:, k - 1]
    return h / np.sqrt([math.factorial(k) for k in range(cap + 1)])


def _hermite_grid(lname, lfn, r, cap):
    """Coefficients by tensor-grid projection: (energy per degree, E[g^2], mean, method)."""
    n = min(64, max(cap + 1, int(HERMITE_GRID_BUDGET ** (1.0 / r) / 2)))
    while n**r > HERMITE_GRID_BUDGET and n > cap + 1:
        n -= 1
    x, w = hermegauss(n)
    w = w / w.sum()
    z = np.stack([axis.ravel() for axis in np.meshgrid(*([x] * r), indexing="ij")], axis=-1)
    g = eval_link(lname, lfn, torch.from_numpy(z)).numpy()
    weights = functools.reduce(np.multiply.outer, [w] * r).ravel()
    second = float((weights * g * g).sum())
    coef = g.reshape((n,) * r)
    hw = w[:, None] * _hermite_table(x, cap)  # c_a = sum_i w_i g(z_i) prod_k He_{a_k}(z_ik)/sqrt(a_k!)
    for _ in range(r):
        coef = np.tensordot(coef, hw, axes=([0], [0]))  # contracts the leading axis, appends a degree axis
    degree = np.indices((cap + 1,) * r).sum(0)
    energy = [float((coef[degree == k] ** 2).sum()) for k in range(cap + 1)]
    return energy, second, float(coef.flat[0]), f"Gauss-Hermite projection, {n}^{r} nodes"


def multi_indices(r: int, cap: int) -> list[tuple[tuple[int, int], ...]]:
    """The multi-indices a in N^r with |a| <= cap, each as its non-zero entries ((k, a_k), ...),
    by total degree (the empty tuple, degree 0, first); math.comb(cap + r, r) of them, enumerated
    without visiting the (cap + 1)^r tensor grid."""
    out = [()]
    frontier = [()]
    for _ in range(cap):
        grown = []
        for a in frontier:  # add one unit to a coordinate >= the last one raised (each index once)
            last = a[-1][0] if a else 0
            for k in range(last, r):
                if a and a[-1][0] == k:
                    grown.append(a[:-1] + ((k, a[-1][1] + 1),))
                else:
                    grown.append(a + ((k, 1),))
        out += grown
        frontier = grown
    return out


def _hermite_least_squares(lname, lfn, r, cap, seed=0):
    """Coefficients by least squares on fixed-seed Gaussian samples (large r)."""
    alphas = multi_indices(r, cap)
    n = max(20 * len(alphas), 20_000)
    z = torch.randn(n, r, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    g = eval_link(lname, lfn, z).numpy()
    tables = [_hermite_table(z[:, k].numpy(), cap) for k in range(r)]
    phi = np.ones((n, len(alphas)))
    for j, a in enumerate(alphas):
        for k, power in a:
            phi[:, j] *= tables[k][:, power]
    # Normal equations: the basis is orthonormal under N(0, I_r), so phi^T phi / n is close to the
    # identity and well conditioned; one matrix product instead of an SVD of phi (seconds at r = 32).
    gram = phi.T @ phi
    coef = np.linalg.solve(gram + 1e-12 * np.trace(gram) / len(gram) * np.eye(len(gram)), phi.T @ g)
    resid = float(np.mean((g - phi @ coef) ** 2))
    energy = [0.0] * (cap + 1)
    for a, c in zip(alphas, coef):
        energy[sum(p for _, p in a)] += float(c * c)
    return energy, sum(energy) + resid, float(coef[0]), f"least squares on {n} Monte Carlo samples (seed {seed})"


@memoize
def hermite_degree(link, r: int, cap: int = HERMITE_CAP) -> dict:
    """Hermite expansion of the link up to total degree ``cap``.

    g(z) = sum_a c_a prod_k He_{a_k}(z_k) / sqrt(a_k!) (orthonormal under N(0, I_r)); the energy of
    degree k is sum_{|a| = k} c_a^2. Returns a dict: ``degree`` (highest k >= 1 whose energy
    exceeds ``HERMITE_TOL`` * Var(g); 0 for a constant), ``polynomial`` (residual below
    ``HERMITE_RESIDUAL_TOL``: a polynomial up to degree cap), ``residual`` = (E[g^2] - sum_{|a| <= cap}
    c_a^2) / Var(g) (0 for a polynomial of degree <= cap, up to rounding ~1e-15), ``cap`` (the cap
    used: lowered for large r to keep the grid small), ``energy`` (list by degree), ``mean``,
    ``variance``, ``declared_degree`` (the link's ``degree`` metadata, or None), ``method``.
    Coefficients come from a tensor Gauss-Hermite projection (exact for polynomials of degree
    <= cap) while (cap + 1)^r stays under ``HERMITE_GRID_BUDGET``, else from least squares on
    Monte Carlo samples with the cap lowered (not below 2) to keep at most
    ``HERMITE_BASIS_BUDGET`` basis functions (r <= ``MAX_R`` keeps the cap at 2 or more).
    """
    lname, lfn, meta = resolve("link", link)
    r = check_r(lname, r, meta)
    requested = cap = int(cap)
    while (cap + 1) ** r > HERMITE_GRID_BUDGET and cap > 2:
        cap -= 1
    if (cap + 1) ** r <= HERMITE_GRID_BUDGET:
        energy, second, mean, method = _hermite_grid(lname, lfn, r, cap)
    else:
        cap = requested
        while cap > 2 and math.comb(cap + r, r) > HERMITE_BASIS_BUDGET:
            cap -= 1
        energy, second, mean, method = _hermite_least_squares(lname, lfn, r, cap)
    variance = max(second - mean * mean, 0.0)
    if variance <= 1e-14 * max(second, 1e-300):
        degree, residual = 0, 0.0
    else:
        residual = max(second - sum(energy), 0.0) / variance
        degree = max([k for k in range(1, cap + 1) if energy[k] > HERMITE_TOL * variance], default=0)
    return {
        "degree": degree,
        "polynomial": residual < HERMITE_RESIDUAL_TOL,
        "residual": residual,
        "cap": cap,
        "energy": energy,
        "mean": mean,
        "variance": variance,
        "declared_degree": meta.get("degree"),
        "method": method,
    }
