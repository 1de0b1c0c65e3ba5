"""Population quantities of docs/theory.md (docs/theory.md#the-population-matrix-m,
docs/theory.md#the-optimal-spectral-threshold), for any link and loss.

Everything is an expectation over z ~ N(0, I_r) with y = g(z) (no label noise):

- ``population_matrix(link, loss, r)``: M = E[loss'(0, y) (z z^T - I_r)], the r x r matrix that
  stage 1 (power iteration) sees on the hidden subspace (loss' = derivative in the prediction t,
  so loss'(0, y) = -T(y)). Squared loss 0.5 (t - y)^2 gives M = -E[y (z z^T - I_r)].
- ``hermite_degree(link, r)``: the probabilists' Hermite expansion g = sum_a c_a He_a / sqrt(a!)
  up to a total-degree cap, its degree and the residual variance beyond the cap (Assumption 1).
- ``alpha_c(link, r)``: the optimal spectral weak-recovery threshold (Troiani et al. 2024;
  Defilippis et al. 2025): with G(y) = E[z z^T - I_r | y], 1 / alpha_c is the largest eigenvalue of
  the map M -> E_y[G(y) M G(y)] on symmetric r x r matrices.
- ``theory_report(link, r, loss)``: all of the above as one JSON-serialisable dict.

Links and losses are given by registered name or as plain callables. Results are deterministic
(fixed quadrature rules and seeds) and cached per (link, loss, r, options).
"""

from __future__ import annotations

from mim_lightning.analysis.common import ALPHA_MAX_R, check_r, resolve
from mim_lightning.analysis.hermite import hermite_degree
from mim_lightning.analysis.moments import eigen_summary, population_matrix, population_moments
from mim_lightning.analysis.threshold import alpha_c, alpha_c_estimate

__all__ = ["alpha_c", "alpha_c_estimate", "eigen_summary", "hermite_degree", "population_matrix",
           "population_moments", "theory_report"]


def theory_report(link, r: int, loss="squared") -> dict:
    """Everything ``mim theory`` prints, as a JSON-serialisable dict.

    Keys: ``link``, ``loss``, ``r``; ``M`` (r x r list, M = E[loss'(0, y)(z z^T - I_r)]),
    ``eigenvalues`` (sorted by |lambda| descending), ``ratio`` (min|lambda| / max|lambda|),
    ``isotropic`` (E[loss'(0, y)]), ``M_error``, ``M_method``; ``hermite_degree``,
    ``hermite_residual``, ``hermite_cap``, ``hermite_polynomial`` (whether the link is a polynomial
    up to degree ``hermite_cap``; ``hermite_degree`` is None when it is not); ``alpha_c``,
    ``alpha_c_error`` (relative), ``alpha_c_method``, ``alpha_c_computed`` (False for
    r > ``ALPHA_MAX_R``, whose cost grows like r^4: alpha_c and its error are then None and the
    method says why).
    """
    lname, _, meta = resolve("link", link)
    fname, _, _ = resolve("loss", loss)
    r = check_r(lname, r, meta)
    moments = population_moments(link, loss, r)
    eigenvalues, ratio = eigen_summary(moments["M"])
    herm = hermite_degree(link, r)
    if r <= ALPHA_MAX_R:
        alpha = alpha_c_estimate(link, r)
    else:
        alpha = {"alpha_c": None, "error": None,
                 "method": f"not computed: r > {ALPHA_MAX_R} (the estimator's cost grows like r^4;"
                           " call analysis.theory.alpha_c_estimate for any r)"}
    return {
        "link": lname,
        "loss": fname,
        "r": r,
        "M": moments["M"].tolist(),
        "eigenvalues": eigenvalues,
        "ratio": ratio,
        "isotropic": moments["isotropic"],
        "M_error": moments["error"],
        "M_method": moments["method"],
        "hermite_degree": herm["degree"] if herm["polynomial"] else None,
        "hermite_polynomial": herm["polynomial"],
        "hermite_residual": herm["residual"],
        "hermite_cap": herm["cap"],
        "alpha_c": alpha["alpha_c"],
        "alpha_c_computed": r <= ALPHA_MAX_R,
        "alpha_c_error": alpha["error"],
        "alpha_c_method": alpha["method"],
    }
