"""Measures of docs/theory.md#measures, batched over a leading replica dimension K.

Plain functions of tensors (the stage-1 hot path calls them); the test metric, which must be right
under DDP, is a torchmetrics ``Metric`` in ``training.metrics``.
"""

from __future__ import annotations

import torch


def frobenius(W: torch.Tensor) -> torch.Tensor:
    """|W|_F per replica, (K,), accumulated in float64: squares of float32 entries underflow below
    ~1e-19 (stage 1 starts from tiny weights) and overflow above ~1e19. NaN or inf when W is not
    finite. No host synchronisation, the same kernels on every device."""
    return torch.linalg.vector_norm(W, dim=(1, 2), dtype=torch.float64)


def subspace_mass(W: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """|W U^T|_F^2 / |W|_F^2 per replica: W (K, m, d), U (K, r, d) -> (K,)."""
    inside = torch.bmm(W, U.transpose(1, 2)).double().square().sum((1, 2))
    return (inside / frobenius(W).square()).to(W.dtype)


def direction_mass(W: torch.Tensor, basis: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """|W b_k|^2 / |W|_F^2 for each row b_k of an orthonormal basis (K, r, d): (K, r). With the
    eigenbasis of M it shows how stage 1 spreads the weight over the hidden directions (collapse
    onto the top one puts it all in the first entry)."""
    along = torch.bmm(W, basis.transpose(1, 2)).double().square().sum(1)
    norm = frobenius(W) if norm is None else norm
    return (along / norm.square().unsqueeze(-1)).to(W.dtype)


def top_right_singular(W: torch.Tensor, r: int) -> torch.Tensor:
    """Q (K, r, d): orthonormal rows spanning the top-r right singular vectors of each W (K, m, d).

    Computed in float64 from the smaller Gram matrix of W / |W|_F (eigh), much cheaper than a full
    SVD when r << min(m, d) and insensitive to the overall scale of W; float64 keeps singular
    values down to ~1e-7 of the largest resolved although the Gram squares them.
    """
    Wn = W.double() / W.double().flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, 1, 1)
    m, d = W.shape[1:]
    if d <= m:
        _, vecs = torch.linalg.eigh(torch.bmm(Wn.transpose(1, 2), Wn))
        return vecs[..., -r:].flip(-1).transpose(1, 2).to(W.dtype)
    _, vecs = torch.linalg.eigh(torch.bmm(Wn, Wn.transpose(1, 2)))
    rows = torch.bmm(vecs[..., -r:].flip(-1).transpose(1, 2), Wn)     # (K, r, d) = S V^T
    return (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-300)).to(W.dtype)


def subspace_iteration(W: torch.Tensor, Q: torch.Tensor, iters: int) -> torch.Tensor:
    """``iters`` block power iterations on W^T W from the orthonormal block Q (K, d, b):
    Q <- qr(W^T (W Q)). The span converges to W's top-b right singular subspace, and its best
    r-dimensional subspace (found by ``ritz_overlap``) to the top-r one, with the error shrinking by
    (s_{b+1} / s_r)^2 per iteration. Householder QR: no eigensolver, and orthonormal whatever the
    conditioning of the block. Each iteration costs 4 m d b flops; W should be scaled to |W|_F = 1
    (a tiny W's products would underflow)."""
    Wt = W.transpose(1, 2)
    for _ in range(iters):
        Q = torch.linalg.qr(torch.bmm(Wt, torch.bmm(W, Q))).Q
    return Q


def ritz_overlap(H: torch.Tensor, P: torch.Tensor, r: int, rowspace: bool = False) -> torch.Tensor:
    """The overlap (..., r, r) of W's best r-dimensional right singular subspace within a block
    with the hidden subspace U, from small matrices only (batched over any leading dimensions):
    H = (W Q)^T (W Q) and P = Q^T U^T for an orthonormal block Q (..., d, b) (Rayleigh-Ritz: the top
    eigenvectors S of H give the Ritz vectors Q S); with ``rowspace``, H = W W^T and P = W U^T, whose
    top eigenvectors s_i give the exact right singular vectors W^T s_i / sqrt(lambda_i)."""
    values, vectors = torch.linalg.eigh(H)
    top = vectors[..., -r:].flip(-1).transpose(-1, -2)                     # (..., r, b), descending
    overlap = top @ P
    if rowspace:
        overlap = overlap / values[..., -r:].flip(-1).clamp_min(1e-300).sqrt().unsqueeze(-1)
    return overlap


def cosines_from_overlap(overlap: torch.Tensor) -> torch.Tensor:
    """Principal cosines, descending, from the overlap matrix Q U^T (..., r, r) of two orthonormal
    bases: its singular values."""
    return torch.linalg.svdvals(overlap.double()).to(overlap.dtype).clamp(0, 1)


def principal_cosines(Q: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(Q) and span(U), descending: (K, r).

    Q, U (K, r, d) with orthonormal rows: the singular values of Q U^T.
    """
    return cosines_from_overlap(torch.bmm(Q, U.transpose(1, 2)))
