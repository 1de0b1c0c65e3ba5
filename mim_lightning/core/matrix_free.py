"""Matrix-free top eigenpairs of the spectral-baseline matrix, batched over K replicas.

The spectral estimator needs the top-r eigenvectors of Sigmahat = (1/n) sum_i w_i x_i x_i^T per
replica. At large d the (K, d, d) matrix cannot be formed; only ``apply(V) = Sigmahat @ V`` for a
block V (K, d, b) is available, each call being one streaming pass over the data (O(n d b)). The
solver is a block Krylov (block Lanczos / Arnoldi) method with full reorthogonalisation:

    Q_0 = qr(G),  G ~ N(0, 1)^{d x b} (seeded),
    W_j = A Q_j = sum_{i <= j} Q_i H_ij + Q_{j+1} B_{j+1}   (H_ij = Q_i^T A Q_j, classical
                                                            Gram-Schmidt twice, then QR),

so after p passes the basis Q = [Q_0 .. Q_{p-1}] (d x m, m = p b) spans the block Krylov space
span{G, A G, .., A^{p-1} G} and A Q = Q H + Q_p B_p E_p^T. Rayleigh-Ritz: H = S Theta S^T (eigh of
the symmetrised m x m matrix), Ritz pairs (theta_k, Q s_k), ranked by the order's key
(magnitude: |theta|, largest: theta, smallest: -theta). A Krylov space captures both ends of the
spectrum, so the largest-|lambda| pairs of an indefinite matrix come out of the same basis as the
largest ones. The Ritz residual needs no extra pass:

    |A Q s_k - theta_k Q s_k| = |B_p E_p^T s_k|   (last b entries of s_k).

Convergence per replica: for every wanted pair |B_p E_p^T s_k| <= tol * max_k |theta_k| and the
wanted Ritz values moved by <= tol * max|theta| since the previous pass (guards against an
eigenvalue not yet seen). The eigenvector error is about residual / gap (gap to the rest of the
spectrum).

Thick restart (Krylov-Schur): when the basis would exceed ``max_blocks`` blocks, it is replaced by
the Ritz vectors Y = Q S_k of the h = max_blocks b / 4 smallest and h largest Ritz values (half the
basis, from both ends of the spectrum, so every order keeps its candidates) and the last block
Q_p, with

    A Y = Y Theta_k + Q_p (B_p E_p^T S_k),   H <- [[Theta_k, C^T], [C, .]],  C = B_p E_p^T S_k,

an exact Arnoldi relation again, so the iteration goes on from there. Memory O(K d b max_blocks),
independent of the number of passes; nothing O(d^2) is formed.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

ORDERS = ("magnitude", "largest", "smallest")
MAX_BLOCKS = 16      # the basis holds at most this many blocks before a thick restart (at d = 4096 one
                     # pass more than an unbounded basis, which would hold 36 blocks)
DEFAULT_BLOCK = 32   # the block for r <= 12 (min(d, max(2 r + 8, 32)))


def _key(theta: torch.Tensor, order: str) -> torch.Tensor:
    return {"magnitude": theta.abs(), "largest": theta, "smallest": -theta}[order]


def _project(blocks: list[torch.Tensor], W: torch.Tensor):
    """Classical Gram-Schmidt against the basis [Q_0 .. Q_j]: W - Q (Q^T W) and Q^T W (stacked)."""
    h = [Q.transpose(1, 2) @ W for Q in blocks]
    for Q, hi in zip(blocks, h):
        W = torch.baddbmm(W, Q, hi, alpha=-1)
    return W, torch.cat(h, 1)


def top_eigenpairs_matrix_free(apply: Callable[[torch.Tensor], torch.Tensor], K: int, d: int, r: int,
                               order: str = "magnitude", *, orders=None, block: int | None = None,
                               max_passes: int = 100, tol: float = 1e-8, seed: int = 0, max_blocks: int = MAX_BLOCKS,
                               generator: torch.Generator | None = None, dtype=torch.float64,
                               device=None):
    """Top-r eigenpairs of the symmetric operator ``apply`` (K, d, b) -> (K, d, b), per replica.

    Returns (vectors (K, r, d), values (K, r), info) ranked as ``spectral.top_eigenpairs`` (key
    descending); with ``orders`` (a tuple of orders, ``order`` is then ignored) returns
    ({order: (vectors, values)}, info) from one Krylov basis, converged for every order.
    ``block`` defaults to min(d, max(2r + 8, 32)): a pass costs about the same for any moderate b
    while a wider block needs fewer passes (memory K d b max_blocks); ``max_passes`` bounds the apply
    calls (each is one pass); ``max_blocks`` (>= 3) bounds the basis (a thick restart keeps half
    of it as Ritz vectors); ``tol`` is the relative Ritz residual (at least 100 eps of ``dtype``;
    tol 1e-6 saves about a fifth of the passes); the start block comes from ``generator`` (CPU)
    or ``seed``, so the result is deterministic. The basis is kept as a list of blocks (no copies
    as it grows; one (K, d, 2h) block of Ritz vectors after a restart). info: passes (apply calls), converged (bool, all
    replicas), converged_replicas (K,), residuals {order: (K, r) relative residuals}, block,
    basis_size, restarts.
    """
    wanted = ((orders,) if isinstance(orders, str) else tuple(orders)) if orders is not None else (order,)
    for o in wanted:
        if o not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {o!r}")
    if not wanted:
        raise ValueError(f"orders must name at least one of {ORDERS}")
    if K < 1 or d < 1:
        raise ValueError(f"K and d must be >= 1, got K={K}, d={d}")
    if not 1 <= r <= d:
        raise ValueError(f"r must satisfy 1 <= r <= d = {d}, got r={r}")
    b = min(d, max(2 * r + 8, DEFAULT_BLOCK)) if block is None else block
    if not r <= b <= d:
        raise ValueError(f"block must satisfy r = {r} <= block <= d = {d}, got block={block}")
    if max_passes < 1:
        raise ValueError(f"max_passes must be >= 1, got {max_passes}")
    if max_blocks < 3:
        raise ValueError(f"max_blocks must be >= 3 (a restart keeps half of the basis), got {max_blocks}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    tol = max(tol, 100 * torch.finfo(dtype).eps)            # float32 cannot resolve less
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    start = torch.randn(K, d, b, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    last = torch.linalg.qr(start).Q
    blocks = [last]
    H = torch.zeros(K, b, b, dtype=dtype, device=last.device)
    prev, restarts = None, 0
    for passes in range(1, max_passes + 1):
        W = apply(last)
        if tuple(W.shape) != tuple(last.shape):
            raise ValueError(f"apply must return the shape of its input {tuple(last.shape)}, got {tuple(W.shape)}")
        W, h = _project(blocks, W.to(dtype))                 # classical Gram-Schmidt, twice
        W, h2 = _project(blocks, W)
        Qn, R = torch.linalg.qr(W)
        Qn, h3 = _project(blocks, Qn)                        # reorthogonalise the new block once more
        Qn, R2 = torch.linalg.qr(Qn)
        m, c = H.shape[-1], last.shape[-1]
        H[:, :, m - c:] = h + h2 + h3 @ R                    # H_{:, j} = basis^T A Q_j
        B = R2 @ R                                           # A Q_j = basis H_{:, j} + Qn B
        theta, S = torch.linalg.eigh((H + H.transpose(1, 2)) / 2)
        scale = theta.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        res = torch.linalg.vector_norm(B @ S[:, m - c:, :], dim=1) / scale        # (K, m)
        idx = {o: _key(theta, o).topk(r, dim=-1).indices for o in wanted}
        vals = torch.cat([theta.gather(-1, i) for i in idx.values()], -1)
        ok = torch.stack([res.gather(-1, i).amax(-1) <= tol for i in idx.values()]).all(0)
        if m < d:                                            # wanted Ritz values settled too
            ok &= ((vals - prev).abs() / scale).amax(-1) <= tol if prev is not None else False
        prev = vals
        if bool(ok.all()) or m >= d or passes == max_passes:
            break
        keep = min(b, d - m)                                 # the basis never exceeds d columns
        last = Qn[..., :keep]
        h = max_blocks * b // 4                              # Ritz vectors kept at each end on a restart
        if m + keep > max_blocks * b and 2 * h < m:          # thick restart at both ends of the spectrum
            kept = torch.cat([S[..., :h], S[..., -h:]], -1)  # (K, m, 2h), theta ascending
            Y = sum(Q @ s for Q, s in zip(blocks, kept.split([Q.shape[-1] for Q in blocks], 1)))
            coupling = B[:, :keep] @ kept[:, m - c:, :]      # Q_p^T A Y
            blocks, H = [Y, last], torch.zeros(K, 2 * h + keep, 2 * h + keep, dtype=dtype, device=H.device)
            H[:, :2 * h, :2 * h] = torch.diag_embed(torch.cat([theta[:, :h], theta[:, -h:]], -1))
            H[:, 2 * h:, :2 * h] = coupling
            restarts += 1
            continue
        blocks.append(last)
        grown = torch.zeros(K, m + keep, m + keep, dtype=dtype, device=H.device)
        grown[:, :m, :m] = H
        grown[:, m:, m - c:m] = B[:, :keep]
        H = grown
    if not bool(ok.all()):
        warnings.warn(f"matrix-free eigensolver: {int((~ok).sum())} of {K} replicas not converged "
                      f"to tol={tol} after {passes} passes (block {b})", RuntimeWarning, stacklevel=2)
    out, residuals = {}, {}
    for o, i in idx.items():
        picked = S.gather(-1, i.unsqueeze(1).expand(-1, S.shape[1], -1))           # (K, m, r)
        vectors = sum(Q @ s for Q, s in zip(blocks, picked.split([Q.shape[-1] for Q in blocks], 1)))
        out[o] = (vectors.transpose(1, 2), theta.gather(-1, i))
        residuals[o] = res.gather(-1, i)
    info = {"passes": passes, "converged": bool(ok.all()), "converged_replicas": ok,
            "residuals": residuals, "block": b, "basis_size": H.shape[-1], "restarts": restarts}
    if orders is not None:
        return out, info
    return (*out[order], info)
