"""The optimal spectral weak-recovery threshold alpha_c (docs/theory.md#the-optimal-spectral-threshold):
with G(y) = E[z z^T - I_r | y], 1 / alpha_c is the largest eigenvalue of M -> E_y[G(y) M G(y)] on
symmetric r x r matrices, estimated from level sets of y."""

from __future__ import annotations

import math

import numpy as np
import torch

from mim_lightning.analysis.common import (
    ALPHA_BINS,
    ALPHA_MIN_BIN,
    ALPHA_REPLICATES,
    ALPHA_SAMPLES,
    DTYPE,
    check_r,
    eval_link,
    memoize,
    resolve,
)
from mim_lightning.errors import MimError

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
