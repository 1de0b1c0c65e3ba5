"""Label preprocessing and the spectral-estimator baseline (docs/theory.md#label-preprocessing,
docs/theory.md#the-spectral-estimator)."""

from __future__ import annotations

from typing import Callable

import torch

from mim_lightning.core.contracts import loss_slope_at_zero
from mim_lightning.core.matrix_free import top_eigenpairs_matrix_free
from mim_lightning.core.measures import principal_cosines


def label_preprocessing(loss: Callable, y: torch.Tensor, name: str = "stage1.loss") -> torch.Tensor:
    """T(y) = -loss'(0, y), elementwise (``core.contracts.loss_slope_at_zero``, checked finite)."""
    return -loss_slope_at_zero(name, loss, y)


def label_weighted_covariance(chunks, weight: Callable, n: int, reduce: Callable) -> torch.Tensor:
    """(1/n) sum_i w(y_i) x_i x_i^T over all chunks and ranks: (K, d, d).

    ``weight`` maps y (K, c) to w (K, c); ``reduce`` sums a tensor over ranks.
    """
    total = None
    for x, y in chunks:
        part = torch.bmm(x.transpose(1, 2) * weight(y).unsqueeze(1), x)
        total = part if total is None else total + part
    return reduce(total) / n


def top_eigenpairs(values: torch.Tensor, vectors: torch.Tensor, r: int, order: str = "magnitude"):
    """From eigh's (values (K, d), vectors (K, d, d)): the top-r eigenvectors (K, r, d) and their
    eigenvalues (K, r); order "magnitude" ranks by |lambda|, "largest" by lambda, "smallest" by -lambda."""
    key = {"magnitude": values.abs(), "largest": values, "smallest": -values}[order]
    idx = key.argsort(dim=-1, descending=True)[..., :r]
    top_vectors = vectors.gather(-1, idx.unsqueeze(1).expand(-1, vectors.shape[1], -1))
    return top_vectors.transpose(1, 2), values.gather(-1, idx)


def spectral_estimate(sigma: torch.Tensor, r: int, order: str = "magnitude") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-r eigenvectors (K, r, d) and their eigenvalues (K, r) of symmetric sigma (K, d, d),
    ranked as in ``top_eigenpairs``."""
    vectors, values = top_eigenpairs(*torch.linalg.eigh(sigma.double()), r, order)
    return vectors.to(sigma.dtype), values.to(sigma.dtype)


def spectral_cosines(chunks, loss: Callable, shift: torch.Tensor, n: int, U: torch.Tensor,
                     reduce: Callable, orders=("magnitude", "largest")) -> dict[str, torch.Tensor]:
    """Principal cosines (K, r) of the spectral estimator with preprocessing T(y) - shift, per order
    (one eigendecomposition for all orders).

    Sigmahat = (1/n) sum_i (T(y_i) - shift) x_i x_i^T (the stage-1 matrix up to sign).
    """
    sigma = label_weighted_covariance(chunks, lambda y: label_preprocessing(loss, y) - shift.unsqueeze(-1), n, reduce)
    values, vectors = torch.linalg.eigh(sigma.double())
    return {order: principal_cosines(top_eigenpairs(values, vectors, U.shape[1], order)[0].to(U.dtype), U)
            for order in orders}


def mean_preprocessing(chunks, loss: Callable, n: int, reduce: Callable) -> torch.Tensor:
    """E_n[T(y)] over all chunks and ranks, per replica: (K,)."""
    total = sum(label_preprocessing(loss, y).sum(-1) for _, y in chunks)
    return reduce(total) / n


def matrix_free_cosines(passes: Callable, loss: Callable, shifts, n: int, U: torch.Tensor,
                        reduce: Callable, orders=("magnitude", "largest"), tol: float = 1e-6) -> list[dict[str, torch.Tensor]]:
    """``spectral_cosines`` without forming Sigmahat, for each shift of ``shifts`` (S tensors (K,),
    e.g. the centred and the uncentred preprocessing): the top-r eigenvectors of every
    Sigmahat_s = (1/n) X^T ((T(y) - shift_s) * X) by block Krylov (``core.matrix_free``), the S K
    operators solved as one batch from the products V -> Sigmahat_s V, all computed in one
    streaming pass over ``passes()`` (a fresh iterator of chunks) per product: the data are
    generated once for every shift. The products run in float32 and are summed in float64, which
    limits ``tol`` to about 1e-6. Memory O(S K d b max_blocks) (``core.matrix_free``), not growing
    with the passes. Returns one {order: cosines (K, r)} per
    shift."""
    K, r, d = U.shape
    shifts = torch.stack(list(shifts))                                   # (S, K)
    S = shifts.shape[0]

    def apply(V: torch.Tensor) -> torch.Tensor:                          # (S K, d, b), shift-major
        b = V.shape[-1]
        blocks = V.to(U.dtype).view(S, K, d, b).permute(1, 2, 0, 3).reshape(K, d, S * b)
        total = torch.zeros(K, d, S * b, dtype=torch.float64, device=U.device)
        for x, y in passes():
            weight = label_preprocessing(loss, y).unsqueeze(0) - shifts.unsqueeze(-1)   # (S, K, rows)
            projected = torch.bmm(x, blocks).view(K, -1, S, b) * weight.permute(1, 2, 0).unsqueeze(-1)
            total += torch.bmm(x.transpose(1, 2), projected.view(K, -1, S * b)).double()
        return (reduce(total) / n).view(K, d, S, b).permute(2, 0, 1, 3).reshape(S * K, d, b)

    found, _ = top_eigenpairs_matrix_free(apply, S * K, d, r, orders=tuple(orders), tol=tol, device=U.device)
    cosines = {order: principal_cosines(vectors.to(U.dtype), U.repeat(S, 1, 1)).view(S, K, r)
               for order, (vectors, _) in found.items()}
    return [{order: c[s] for order, c in cosines.items()} for s in range(S)]


def unbounded_fraction(chunks, loss: Callable, shift: torch.Tensor, n: int, reduce: Callable,
                       far: float = 1e4, sides: str = "both") -> torch.Tensor:
    """Fraction of samples (K,) on which the stage-1 objective loss(t, y) + shift * t has no lower
    bound in the prediction t on the side(s) the network can reach: its slope at t = +far is
    negative ("up": reachable when f can grow) or at t = -far positive ("down"); for a
    preprocessed loss sqrt(1 + t^2) - 1 - t T(y) this is T(y) - shift > 1 or < -1. Gradient descent
    run long enough sends f to infinity on those samples."""
    total = None
    for _, y in chunks:
        with torch.enable_grad():
            t = torch.full_like(y, far).requires_grad_(True)
            (up,) = torch.autograd.grad(loss(t, y).sum(), t)
            t = torch.full_like(y, -far).requires_grad_(True)
            (down,) = torch.autograd.grad(loss(t, y).sum(), t)
        shifted = shift.unsqueeze(-1)
        rising, falling = (up + shifted) < -1e-6, (down + shifted) > 1e-6
        bad = {"up": rising, "down": falling, "both": rising | falling}[sides]
        part = bad.sum(-1).to(torch.float64)
        total = part if total is None else total + part
    return reduce(total) / n
