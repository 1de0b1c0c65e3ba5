"""The population matrix M = E[loss'(0, y) (z z^T - I_r)] of a link and a loss over z ~ N(0, I_r)
(docs/theory.md#the-population-matrix-m): Gauss-Hermite quadrature, or randomised quasi-Monte
Carlo beyond the grids, with an error estimate."""

from __future__ import annotations

import math

import numpy as np
import torch

from mim_lightning.analysis.common import (
    DTYPE,
    QMC_POINTS,
    QMC_REPLICATES,
    QMC_SIGMAS,
    QUAD_NODES,
    check_r,
    eval_link,
    gauss_hermite,
    memoize,
    resolve,
)
from mim_lightning.core.contracts import loss_slope_at_zero

def _quadrature_moments(link, loss, n: int, r: int) -> tuple[np.ndarray, float]:
    """(M, E[loss'(0, y)]) by the n^r Gauss-Hermite rule."""
    (lname, lfn), (fname, ffn) = link, loss
    z, w = gauss_hermite(n, r)
    y = eval_link(lname, lfn, z)
    a = w * loss_slope_at_zero(fname, ffn, y)
    iso = a.sum()
    m = torch.einsum("n,ni,nj->ij", a, z, z) - iso * torch.eye(r, dtype=DTYPE)
    return m.numpy(), float(iso)


def _qmc_moments(link, loss, r: int, n_points: int = QMC_POINTS, replicates: int = QMC_REPLICATES, seed: int = 0):
    """(M, E[loss'(0, y)], standard error of M's entries, of the isotropic part) by randomised
    quasi-Monte Carlo: ``replicates`` independently scrambled Sobol blocks of ``n_points``; the
    standard error is the spread of the block estimates / sqrt(replicates)."""
    (lname, lfn), (fname, ffn) = link, loss
    eye = torch.eye(r, dtype=DTYPE)
    ms, isos = [], []
    for k in range(replicates):
        u = torch.quasirandom.SobolEngine(r, scramble=True, seed=seed * 1009 + k).draw(n_points, dtype=DTYPE)
        z = torch.special.ndtri(u.clamp(1e-16, 1 - 1e-16))
        y = eval_link(lname, lfn, z)
        lp = loss_slope_at_zero(fname, ffn, y)
        ms.append((torch.einsum("n,ni,nj->ij", lp, z, z) / n_points - lp.mean() * eye).numpy())
        isos.append(float(lp.mean()))
    ms, isos = np.stack(ms), np.asarray(isos)
    root = math.sqrt(replicates)
    return ms.mean(0), float(isos.mean()), float(ms.std(0, ddof=1).max() / root), float(isos.std(ddof=1) / root)


@memoize
def population_moments(link, loss="squared", r: int = 2) -> dict:
    """M = E[loss'(0, y) (z z^T - I_r)] and the isotropic part E[loss'(0, y)], with error bars.

    Returns a dict: ``M`` (numpy r x r), ``isotropic`` (float), ``error`` (estimated absolute
    error of M's entries and of the isotropic part), ``method`` (str).

    For r <= 6, tensor-product Gauss-Hermite quadrature with ``QUAD_NODES`` nodes per dimension:
    exact (to rounding) for polynomial integrands, e.g. a polynomial link under squared loss;
    ``error`` = largest entrywise difference with the rules of 2/3 and 1/2 as many nodes. When
    that is not negligible (a loss' with kinks, e.g. Huber, makes Gauss-Hermite converge only
    algebraically, ~1e-3), and always for r > 6, randomised quasi-Monte Carlo (``QMC_REPLICATES``
    scrambled Sobol blocks of ``QMC_POINTS``) with ``error`` = 3 standard errors (~1e-4 for
    Huber) is also computed, and the estimate with the smaller error is returned.
    """
    lname, lfn, meta = resolve("link", link)
    r = check_r(lname, r, meta)
    fname, ffn, _ = resolve("loss", loss)
    link_, loss_ = (lname, lfn), (fname, ffn)
    m, iso, error, method, scale = None, None, float("inf"), "", 1.0
    if r in QUAD_NODES:
        n = QUAD_NODES[r]
        m, iso = _quadrature_moments(link_, loss_, n, r)
        error = 0.0
        for n2 in ((2 * n) // 3, n // 2):
            m2, iso2 = _quadrature_moments(link_, loss_, n2, r)
            error = max(error, float(np.abs(m - m2).max()), abs(iso - iso2))
        scale = max(1.0, float(np.abs(m).max()), abs(iso))
        error = max(error, 1e-13 * scale)
        method = f"Gauss-Hermite quadrature, {n}^{r} nodes (error: difference with {(2 * n) // 3}^{r}, {n // 2}^{r})"
    if error > 1e-10 * scale:
        m2, iso2, se, iso_se = _qmc_moments(link_, loss_, r)
        error2 = QMC_SIGMAS * max(se, iso_se)
        if error2 < error:
            m, iso, error = m2, iso2, error2
            method = (
                f"randomised quasi-Monte Carlo, {QMC_REPLICATES} scrambled Sobol blocks of {QMC_POINTS}"
                f" (error: {QMC_SIGMAS:g} standard errors)"
            )
    return {"M": 0.5 * (m + m.T), "isotropic": iso, "error": error, "method": method}


def population_matrix(link, loss="squared", r: int = 2) -> tuple[np.ndarray, float]:
    """(M, error): M = E[loss'(0, y) (z z^T - I_r)] as a numpy r x r array and the estimated
    absolute error of its entries (see ``population_moments``)."""
    moments = population_moments(link, loss, r)
    return moments["M"], moments["error"]


def eigen_summary(m: np.ndarray) -> tuple[list[float], float]:
    """Eigenvalues of the symmetric matrix m sorted by |lambda| descending, and
    min|lambda| / max|lambda| (0 when m = 0)."""
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))
    eig = eig[np.argsort(-np.abs(eig), kind="stable")]
    top = abs(eig[0])
    return [float(v) for v in eig], float(abs(eig[-1]) / top) if top > 0 else 0.0
