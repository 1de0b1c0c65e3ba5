"""Chance levels: what a subspace or weights drawn at random would score (the sweep's plots and the
reference series of a run's TensorBoard draw them).

* smallest principal cosine: the median, over uniformly random r-dimensional subspaces of R^d, of
  the smallest principal cosine with a fixed one (a seeded simulation, cached);
* subspace mass of W, and the mean squared cosine of a random subspace: exactly r / d;
* mass per unit dimension of one eigenspace of M: exactly 1 / d.
"""

from __future__ import annotations

import functools

import numpy as np

DRAWS = 4000  # the median's relative standard error is about 2% (r = 1), less for larger r


def _wishart(rng: np.random.Generator, draws: int, r: int, dof: int) -> np.ndarray:
    """``draws`` samples of Wishart_r(dof, I), i.e. of X^T X with X a dof x r standard Gaussian."""
    if dof < r:  # singular: sample it as it is defined (dof < r is small)
        x = rng.standard_normal((draws, dof, r))
        return x.transpose(0, 2, 1) @ x
    # Bartlett: L lower triangular, L_ii^2 ~ chi^2(dof - i), L_ij ~ N(0, 1) below the diagonal
    lower = np.tril(rng.standard_normal((draws, r, r)), -1)
    diagonal = np.sqrt(rng.chisquare(dof - np.arange(r), size=(draws, r)))
    lower[:, np.arange(r), np.arange(r)] = diagonal
    return lower @ lower.transpose(0, 2, 1)


@functools.lru_cache(maxsize=None)
def median_min_cosine(d: int, r: int, draws: int = DRAWS, seed: int = 0) -> float:
    """Median smallest principal cosine between a uniformly random r-dim subspace of R^d and a fixed
    one (about 0.6745 / sqrt(d) for r = 1 and large d; far below sqrt(r / d) for r > 1).

    A random subspace is the span of a d x r Gaussian G; against span(e_1, ..., e_r) its squared
    principal cosines are the eigenvalues of (A + B)^-1/2 A (A + B)^-1/2 with A = G_top^T G_top ~
    Wishart_r(r) and B = G_rest^T G_rest ~ Wishart_r(d - r), independent: sampled in O(r^3), whatever d."""
    if not 0 < r <= d:
        raise ValueError(f"need 0 < r <= d (got r = {r}, d = {d})")
    if r == d:
        return 1.0
    rng = np.random.default_rng(seed)
    top = rng.standard_normal((draws, r, r))
    a = top.transpose(0, 2, 1) @ top
    b = _wishart(rng, draws, r, d - r)
    inverse = np.linalg.inv(np.linalg.cholesky(a + b))
    squared = np.linalg.eigvalsh(inverse @ a @ inverse.transpose(0, 2, 1))[:, 0]
    return float(np.median(np.sqrt(np.clip(squared, 0.0, 1.0))))


def chance_subspace_mass(d: int, r: int) -> float:
    """E |W P_U|_F^2 / |W|_F^2 for random (rotation-invariant) W: exactly r / d."""
    return r / d


def mass_per_dimension(d: int) -> float:
    """The same per unit dimension of any fixed subspace: 1 / d."""
    return 1 / d
