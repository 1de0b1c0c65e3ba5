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

import copy
import functools
import math
from typing import Callable

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss

from mim_lightning.core.contracts import autograd_derivative, link_values, loss_slope_at_zero, loss_values
from mim_lightning.errors import MimError
from mim_lightning.plugins.manager import get_registry

DTYPE = torch.float64

# Gauss-Hermite nodes per dimension for M (coarser rules give the error estimate). Beyond r = 6,
# or when quadrature is inaccurate (kinks), M is estimated by randomised quasi-Monte Carlo.
QUAD_NODES = {1: 200, 2: 150, 3: 60, 4: 22, 5: 12, 6: 8}
QMC_POINTS = 2**14
QMC_REPLICATES = 16
QMC_SIGMAS = 3.0  # quasi-Monte Carlo error = QMC_SIGMAS standard errors

HERMITE_CAP = 6
HERMITE_GRID_BUDGET = 200_000  # points of the tensor grid used for the Hermite expansion
HERMITE_BASIS_BUDGET = 600  # basis functions of the least-squares Hermite fit (large r)
HERMITE_TOL = 1e-10  # a degree counts when its energy exceeds this fraction of Var(g)
HERMITE_RESIDUAL_TOL = 1e-6  # a polynomial up to the cap: variance fraction beyond it below this

# r <= MAX_R: every quantity here is bounded in time and memory (the Hermite expansion up to
# degree 2 in 32 variables has 561 terms); alpha_c's cost grows like r^4 and theory_report
# computes it for r <= ALPHA_MAX_R only (``alpha_c_estimate`` itself takes any r).
MAX_R = 32
ALPHA_MAX_R = 6

ALPHA_SAMPLES = 2**21
ALPHA_BINS = 200
ALPHA_MIN_BIN = 16
ALPHA_REPLICATES = 8


# --------------------------------------------------------------------------- helpers


def resolve(kind: str, component) -> tuple[str, Callable, dict]:
    """(name, fn, metadata) of a registered component name, or of a plain callable."""
    if callable(component):
        return getattr(component, "__name__", f"<{kind}>"), component, {}
    if not isinstance(component, str):
        raise MimError(f"{kind} must be a registered name or a function, got {component!r}")
    found = get_registry().get(kind, component)  # MimError listing the names when unknown
    return found.name, found.fn, found.metadata


def check_r(name: str, r, metadata: dict | None = None) -> int:
    """r as an int; MimError when it is not a positive integer or below the link's ``min_r``."""
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise MimError(f"r must be a positive integer, got {r!r}")
    if r > MAX_R:
        raise MimError(f"r = {r} is above the limit of the theory computations, r <= {MAX_R}")
    min_r = (metadata or {}).get("min_r")
    if min_r is not None and r < min_r:
        raise MimError(f"link {name!r} needs r >= {min_r} (its min_r), got r = {r}")
    return int(r)


def _cache_key(args: tuple, kwargs: dict) -> tuple:
    """Arguments as a cache key in which a component name stands for what it names now (the
    registered functions and metadata of every kind), so a rebuilt registry that maps a name to
    another function (plugins changed) is a cache miss."""
    registered: dict[str, list] = {}
    if any(isinstance(v, str) for v in (*args, *kwargs.values())):
        for c in get_registry().all():
            registered.setdefault(c.name, []).append((c.kind, c.fn, repr(sorted(c.metadata.items()))))

    def part(value):
        return (value, tuple(registered.get(value, ()))) if isinstance(value, str) else value

    return tuple(part(v) for v in args), tuple(sorted((k, part(v)) for k, v in kwargs.items()))


def memoize(fn):
    """Cache results per arguments (component names resolved to the registered functions) and
    return deep copies, so callers may mutate them; unhashable arguments skip the cache."""
    cache: dict = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            key = _cache_key(args, kwargs)
            hash(key)
        except TypeError:
            return fn(*args, **kwargs)
        if key not in cache:
            if len(cache) >= 256:
                cache.pop(next(iter(cache)))
            cache[key] = fn(*args, **kwargs)
        return copy.deepcopy(cache[key])

    wrapper.cache_clear = cache.clear
    return wrapper


def eval_link(name: str, fn: Callable, z: torch.Tensor) -> torch.Tensor:
    """y = g(z) for z of shape (n, r), checked (``core.contracts``): a finite float64 tensor of
    shape (n,)."""
    with torch.no_grad():
        return link_values(name, fn, z).to(DTYPE)


def loss_derivatives(name: str, fn: Callable, t: torch.Tensor, y: torch.Tensor, order: int = 1):
    """loss'(t, y) (order 1) or (loss', loss'') (order 2), derivatives in t by autograd; the loss
    is checked by ``core.contracts`` (values of t's shape, differentiable in t; a loss that does not
    depend on t has loss' = 0)."""
    t = t.detach().to(DTYPE).clone().requires_grad_(True)
    y = y.detach().to(DTYPE)
    with torch.enable_grad():
        value = loss_values(name, fn, t, y, finite=False)
        d1 = autograd_derivative("loss", name, value, t, "t", create_graph=order > 1)
        d1 = torch.zeros_like(t) if d1 is None else d1
        if order == 1:
            return d1.detach()
        d2 = None
        if d1.requires_grad:
            d2 = autograd_derivative("loss", name, d1, t, "t (second derivative)")
        d2 = torch.zeros_like(t) if d2 is None else d2
        return d1.detach(), d2.detach()


def loss_slopes_at_zero(name: str, fn: Callable, y: torch.Tensor) -> torch.Tensor:
    """loss'(0, y) in float64, checked finite (``core.contracts.loss_slope_at_zero``)."""
    return loss_slope_at_zero(name, fn, y.detach().to(DTYPE))


@functools.lru_cache(maxsize=16)
def gauss_hermite(n: int, r: int, prune: float = 1e-30) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product Gauss-Hermite rule for N(0, I_r): points (N, r), weights (N,) summing to 1.

    Exact for polynomials of degree <= 2n - 1 in each coordinate. Points whose weight is below
    ``prune`` are dropped (they cannot matter and may overflow a link).
    """
    x, w = hermegauss(n)
    w = w / w.sum()
    points = np.stack([g.ravel() for g in np.meshgrid(*([x] * r), indexing="ij")], axis=-1)
    weights = functools.reduce(np.multiply.outer, [w] * r).ravel()
    keep = weights > prune
    return torch.from_numpy(points[keep]), torch.from_numpy(weights[keep])


# --------------------------------------------------------------------------- population matrix


def _quadrature_moments(link, loss, n: int, r: int) -> tuple[np.ndarray, float]:
    """(M, E[loss'(0, y)]) by the n^r Gauss-Hermite rule."""
    (lname, lfn), (fname, ffn) = link, loss
    z, w = gauss_hermite(n, r)
    y = eval_link(lname, lfn, z)
    a = w * loss_slopes_at_zero(fname, ffn, y)
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
        lp = loss_slopes_at_zero(fname, ffn, y)
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


# --------------------------------------------------------------------------- Hermite expansion


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


# --------------------------------------------------------------------------- alpha_c


def _sym_basis(r: int) -> np.ndarray:
    """Orthonormal basis of symmetric r x r matrices (Frobenius), as columns of an r^2 x m array,
    in the order of ``np.triu_indices(r)``."""
    rows, cols = np.triu_indices(r)
    basis = np.zeros((r * r, len(rows)))
    for k, (i, j) in enumerate(zip(rows, cols)):
        e = np.zeros((r, r))
        e[i, j] = e[j, i] = 1.0 if i == j else 1.0 / math.sqrt(2.0)
        basis[:, k] = e.ravel()
    return basis


def _bin_edges(y_sorted: np.ndarray, n_bins: int) -> tuple[np.ndarray, bool, str]:
    """Start indices of the conditioning bins in the sorted sample, whether they are exact level
    sets, and a description.

    Discrete y (few distinct values): exact level sets. Otherwise bins of equal width in the
    normal score s = Phi^{-1}(rank / N) over |s| <= s_max (tails of ~64 samples each outside):
    equal-probability bins in the bulk that refine towards the tails. Bins with fewer than
    ``ALPHA_MIN_BIN`` samples are merged into their left neighbour.
    """
    n = len(y_sorted)
    change = np.flatnonzero(np.diff(y_sorted) != 0) + 1
    if len(change) + 1 <= max(2, int(math.sqrt(n)) // 4):
        return np.concatenate([[0], change]), True, f"exact level sets of y ({len(change) + 1} values)"
    s_max = float(torch.special.ndtri(torch.tensor(1.0 - 64.0 / n, dtype=DTYPE)))
    s_edges = torch.linspace(-s_max, s_max, n_bins + 1, dtype=DTYPE)
    cuts = np.ceil(torch.special.ndtr(s_edges).numpy() * n - 0.5).astype(np.int64)
    starts, last = [0], 0
    for c in cuts:
        if c - last >= ALPHA_MIN_BIN and n - c >= ALPHA_MIN_BIN:
            starts.append(int(c))
            last = int(c)
    return np.asarray(starts), False, f"{len(starts)} normal-score bins of y"


def _sample(r: int, n: int, seed: int, sampler: str, replicates: int) -> torch.Tensor:
    """z ~ N(0, I_r) as ``replicates`` independent blocks of n // replicates points: scrambled
    Sobol points through Phi^{-1} ('sobol', one scrambling seed per block) or i.i.d. ('iid')."""
    size = n // replicates
    if sampler == "sobol":
        blocks = [
            torch.quasirandom.SobolEngine(r, scramble=True, seed=seed * 1009 + k).draw(size, dtype=DTYPE)
            for k in range(replicates)
        ]
        return torch.special.ndtri(torch.cat(blocks).clamp(1e-16, 1 - 1e-16))
    if sampler == "iid":
        return torch.randn(size * replicates, r, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    raise MimError(f"unknown sampler {sampler!r}; available: sobol, iid")


def _vech(z: torch.Tensor, rows, cols) -> torch.Tensor:
    """Upper-triangle entries of z z^T - I for each row of z: shape (n, m)."""
    return z[:, rows] * z[:, cols] - torch.as_tensor(rows == cols, dtype=DTYPE)


def _operator(stats_s, stats_c, counts, r, rows, cols, basis) -> np.ndarray:
    """The map M -> E_y[G M G] as a symmetric m x m matrix in the orthonormal basis of symmetric
    matrices, from per-bin sums S_b = sum X_i and C_b = sum X_i X_i^T (X_i = vech(z_i z_i^T - I)).

    E[G_b (x) G_b] is estimated without the 1/n_b noise bias by the U-statistic
    (S_b S_b^T - C_b) / (n_b (n_b - 1)); bins are weighted by n_b / N.
    """
    n = counts.sum()
    outer = stats_s[:, :, None] * stats_s[:, None, :] - stats_c
    pairs = np.maximum(counts * (counts - 1), 1.0)  # a bin of one sample carries no estimate
    k_vech = (outer / pairs[:, None, None] * (np.where(counts > 1, counts, 0) / n)[:, None, None]).sum(0)
    m = len(rows)
    full = np.zeros((r, r, r, r))  # full[i, j, k, l] = E[G_ij G_kl]
    for a in range(m):
        for b in range(m):
            for i, j in {(rows[a], cols[a]), (cols[a], rows[a])}:
                for k, l in {(rows[b], cols[b]), (cols[b], rows[b])}:
                    full[i, j, k, l] = k_vech[a, b]
    # (G M G)_il = sum_jk G_ij M_jk G_kl: the map on vec(M) has entries [(i, l), (j, k)].
    op = full.transpose(0, 3, 1, 2).reshape(r * r, r * r)
    sym = basis.T @ op @ basis
    return 0.5 * (sym + sym.T)


def _top(sym: np.ndarray, basis: np.ndarray, r: int) -> tuple[float, np.ndarray]:
    """Largest eigenvalue of the operator and its eigenvector as an r x r matrix."""
    vals, vecs = np.linalg.eigh(sym)
    return float(vals[-1]), (basis @ vecs[:, -1]).reshape(r, r)


@memoize
def alpha_c_estimate(
    link,
    r: int,
    n_samples: int = ALPHA_SAMPLES,
    n_bins: int = ALPHA_BINS,
    seed: int = 0,
    sampler: str = "sobol",
    replicates: int = ALPHA_REPLICATES,
) -> dict:
    """The optimal spectral weak-recovery threshold alpha_c, with its method and accuracy.

    G(y) = E[z z^T - I_r | y] and 1 / alpha_c = largest eigenvalue of L: M -> E_y[G(y) M G(y)] on
    symmetric r x r matrices (L preserves the PSD cone, so this is also its spectral radius and
    the sup over PSD M of |L(M)|_F / |M|_F, the form in Troiani et al.).

    Method: ``n_samples`` points z (``replicates`` independently scrambled Sobol blocks, fixed
    seeds), y = g(z), pooled and sorted; G is averaged over bins of y (exact level sets for
    discrete y, else ``n_bins`` bins of equal width in the normal score of y's rank, which refine
    the tails); E[G_ij G_kl] is estimated per bin by the unbiased U-statistic
    (S_b S_b^T - C_b) / (n_b (n_b - 1)) (S_b, C_b: sums of X = z z^T - I and of X (x) X), so no
    1 / n_b noise bias remains; what remains is the binning bias (under-estimation by the
    within-bin variance of G, O(bin width^2) for smooth G), removed to leading order by Richardson
    extrapolation against the estimate with pairs of bins merged.
    ``error`` (relative, on alpha_c) = (binning + sampling) / estimate, with binning = |estimate
    - estimate with pairs of bins merged| and sampling = 2 sd(block tops) / sqrt(K) + |mean(block
    tops) - pooled top| / (sqrt(K) - 1), where the block tops are the top eigenvalues estimated
    from each of the K scrambled blocks alone (the second term bounds the upward bias of a top
    eigenvalue under noise, which matters when it is degenerate, e.g. sum_he2 for larger r).
    Validated against closed forms (he2: 1/2; sum_he2, r = 2: 1; sum_he2, r = 3: 3/2; z1z2:
    1 / (1 + E[(|y| K1(|y|) / K0(|y|) - 1)^2]) = 0.59375; sign(z1 z2): pi^2 / 4): relative error
    below 0.1% with the defaults for r <= 3 (about 0.2% for sum_he2 at r = 4..6, whose top
    eigenvalue is r(r+1)/2-fold degenerate), and the reported error bounds it (tests).
    Runtime with the defaults: ~0.5 s for r = 2 on two idle CPU cores; the work grows like r^4.

    Returns a dict: ``alpha_c``, ``inverse`` (1 / alpha_c), ``error`` (relative),
    ``binning_change`` and ``sampling_error`` (its two parts, absolute, on 1 / alpha_c),
    ``top_matrix`` (the leading eigenvector of L as an r x r list), ``method``.
    """
    lname, lfn, meta = resolve("link", link)
    r = check_r(lname, r, meta)
    if int(replicates) < 2 or int(n_samples) < 64 * int(replicates):
        raise MimError(
            f"alpha_c needs replicates >= 2 and n_samples >= 64 * replicates, got {replicates} and {n_samples}"
        )
    z = _sample(r, int(n_samples), seed, sampler, int(replicates))
    n_samples = len(z)
    block = torch.arange(n_samples) // (n_samples // replicates)
    y = torch.cat([eval_link(lname, lfn, z[i : i + 2**18]) for i in range(0, n_samples, 2**18)])
    order = torch.argsort(y, stable=True)
    z, block = z[order], block[order]
    starts, exact, bins_text = _bin_edges(y[order].numpy(), int(n_bins))
    counts = np.diff(np.append(starts, n_samples)).astype(np.float64)
    bin_of = torch.from_numpy(np.repeat(np.arange(len(starts)), counts.astype(np.int64)))

    rows, cols = np.triu_indices(r)
    m = len(rows)
    chunk = min(2**18, max(2**10, 2**23 // (m * m + m)))  # at most ~64 MB of features at a time
    n_bins_used = len(starts)
    sums = torch.zeros(replicates * n_bins_used, m + m * m, dtype=DTYPE)  # per (block, bin)
    for i in range(0, n_samples, chunk):
        x = _vech(z[i : i + chunk], rows, cols)
        feats = torch.cat([x, (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)], dim=1)
        sums.index_add_(0, block[i : i + chunk] * n_bins_used + bin_of[i : i + chunk], feats)
    sums = sums.numpy().reshape(replicates, n_bins_used, m + m * m)
    block_counts = np.stack(
        [np.bincount(bin_of[block == k].numpy(), minlength=n_bins_used) for k in range(replicates)]
    ).astype(np.float64)
    basis = _sym_basis(r)

    def operator(s_, c_):
        return _operator(s_[..., :m], s_[..., m:].reshape(*s_.shape[:-1], m, m), c_, r, rows, cols, basis)

    pooled = operator(sums.sum(0), counts)
    inverse, top = _top(pooled, basis, r)

    # Same estimate with pairs of bins merged: the change measures the binning bias (none for
    # exact level sets).
    inverse_coarse = inverse
    if not exact:
        firsts = np.arange(0, n_bins_used, 2)
        coarse = operator(np.add.reduceat(sums.sum(0), firsts), np.add.reduceat(counts, firsts))
        inverse_coarse, _ = _top(coarse, basis, r)

    # Sampling error: the top eigenvalue from each scrambled block alone (same bins). Their spread
    # gives the standard error; their mean's excess over the pooled value measures the upward bias
    # of a top eigenvalue under noise (large when it is degenerate, e.g. sum_he2 at larger r),
    # which shrinks like 1/sqrt(points) (or faster for Sobol points) from a block to the pool.
    block_tops = np.array([_top(operator(sums[k], block_counts[k]), basis, r)[0] for k in range(replicates)])
    root = math.sqrt(replicates)
    sampling = 2 * block_tops.std(ddof=1) / root + abs(block_tops.mean() - inverse) / (root - 1)
    # Binning bias is O(width^2) for smooth G: Richardson-extrapolate; |fine - coarse| bounds the
    # remaining bias also when it is only O(width) (a G with jumps).
    binning = abs(inverse - inverse_coarse)
    inverse = inverse + (inverse - inverse_coarse) / 3
    error = (binning + sampling) / inverse if inverse > 0 else float("inf")
    return {
        "alpha_c": 1.0 / inverse if inverse > 0 else float("inf"),
        "inverse": inverse,
        "error": error,
        "binning_change": binning,
        "sampling_error": sampling,
        "top_matrix": top.tolist(),
        "method": (
            f"{sampler} sample of {n_samples} points in {replicates} blocks (seed {seed}),"
            f" G(y) averaged over {bins_text}"
        ),
    }


def alpha_c(link, r: int) -> float:
    """The optimal spectral weak-recovery threshold alpha_c = n_c / d
    (docs/theory.md#the-optimal-spectral-threshold; inf when G(y) = 0, e.g. an odd link with no
    second-order information); see
    ``alpha_c_estimate`` for the method and its accuracy."""
    return alpha_c_estimate(link, r)["alpha_c"]


# --------------------------------------------------------------------------- report


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
