"""Measures of docs/theory.md#measures, batched over a leading replica dimension K.

Plain functions of tensors (the stage-1 hot path calls them); the test metric, which must be right
under DDP, is a torchmetrics ``Metric`` in ``training.metrics``.
"""

from __future__ import annotations

import torch


FLOAT32_NORM_RANGE = (1e-10, 1e18)  # float32 norms in here lose nothing to underflowed or overflowed squares


def frobenius(W: torch.Tensor) -> torch.Tensor:
    """|W|_F per replica, (K,), in float64. Squares of float32 entries underflow below ~1e-19 (stage
    1 starts from tiny weights) and overflow above ~1e19, so the norm is accumulated in float64;
    on the CPU, where casting to float64 makes the pass ~25x slower, the float32 norm is kept
    whenever every replica's lies in FLOAT32_NORM_RANGE (then what underflowed is below 1e-8 of
    it). A check there costs no synchronisation."""
    if W.dtype == torch.float32 and W.device.type == "cpu":
        norm = torch.linalg.vector_norm(W, dim=(1, 2))
        low, high = FLOAT32_NORM_RANGE
        if bool(((norm >= low) & (norm <= high)).all()):
            return norm.double()
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


def orthonormalise(Z: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (K, d, b) of the columns of Z (K, d, b) from the small Gram matrix:
    Z^T Z = V diag(lam) V^T, Q = Z V diag(lam)^{-1/2}, in float64 (columns of Z that are
    dependent to 1e-7 of the largest still come out orthonormal). A b x b eigh is far cheaper than
    a Householder QR of the tall d x b matrix for the small b used here."""
    Zd = Z.double()
    lam, V = torch.linalg.eigh(torch.bmm(Zd.transpose(1, 2), Zd))
    scale = lam.clamp_min(lam[..., -1:].clamp_min(1e-300) * 1e-14).rsqrt()
    return torch.bmm(Zd, V * scale.unsqueeze(-2)).to(Z.dtype)


def refine_subspace(W: torch.Tensor, basis: torch.Tensor, iters: int, r: int | None = None,
                    tol: float | None = None, norm: torch.Tensor | None = None) -> torch.Tensor:
    """Subspace iteration with Rayleigh-Ritz on W^T W from ``basis`` (K, d, b):
    Q <- orth(W^T W Q), then Q <- Q S with S the eigenvectors (descending) of (W Q)^T (W Q).

    The Rayleigh-Ritz rotation puts the best r-dimensional subspace of span(Q) first, so the leading
    r columns converge to W's top-r right singular subspace with the error shrinking by
    (s_{b+1} / s_r)^2 per iteration (b = r + oversampling), not only (s_{r+1} / s_r)^2 as plain
    orthogonal iteration's leading columns would. Each iteration costs 4 m d b flops (W Q of the
    rotated basis is the previous product rotated, not a third pass over W) and two b x b
    eigensolvers (``orthonormalise``), far below the O(min(m, d)^3) of an eigensolver of W, with
    no host synchronisation on a GPU. The basis is carried from one recorded step to the next,
    where W has changed little. With ``tol`` (used on the CPU, where a check costs no
    synchronisation) the iteration stops once the leading r columns move by less than tol
    (squared sines), after at most ``iters`` iterations.
    """
    norm = frobenius(W) if norm is None else norm
    scale = (1 / norm.clamp_min(1e-300)).clamp_max(torch.finfo(W.dtype).max).to(W.dtype).view(-1, 1, 1)
    Q = basis
    WQ = torch.bmm(W, Q) * scale                                              # W Q / |W|
    for _ in range(iters):
        rows = torch.bmm(WQ.transpose(1, 2), W) * scale                       # (W^T W Q)^T / |W|^2
        previous = Q
        Q = orthonormalise(rows.transpose(1, 2))
        WQ = torch.bmm(W, Q).double() * scale.double()
        _, vectors = torch.linalg.eigh(torch.bmm(WQ.transpose(1, 2), WQ))
        rotation = vectors.flip(-1)
        Q = torch.bmm(Q, rotation.to(Q.dtype))
        WQ = torch.bmm(WQ, rotation).to(W.dtype)                              # W Q / |W| of the rotated Q
        if tol is not None:
            lead, old = Q[..., :r], previous[..., :r]
            moved = (lead - torch.bmm(old, torch.bmm(old.transpose(1, 2), lead))).square().sum((1, 2))
            if float(moved.max()) < tol:
                break
    return Q


def cosines_from_overlap(overlap: torch.Tensor) -> torch.Tensor:
    """Principal cosines, descending, from the overlap matrix Q U^T (..., r, r) of two orthonormal
    bases: its singular values."""
    return torch.linalg.svdvals(overlap.double()).to(overlap.dtype).clamp(0, 1)


def principal_cosines(Q: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(Q) and span(U), descending: (K, r).

    Q, U (K, r, d) with orthonormal rows: the singular values of Q U^T.
    """
    return cosines_from_overlap(torch.bmm(Q, U.transpose(1, 2)))
