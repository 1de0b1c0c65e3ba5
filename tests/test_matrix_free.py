"""The matrix-free block Krylov eigensolver against dense torch.linalg.eigh."""

import pytest
import torch

from mim_lightning.core.matrix_free import top_eigenpairs_matrix_free

@pytest.fixture(autouse=True)
def one_thread():
    """Small matrices: one thread is fastest and does not fight other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


KEYS = {"magnitude": torch.Tensor.abs, "largest": lambda v: v, "smallest": torch.Tensor.neg}


def dense_top(sigma, r, order):
    """Reference: top-r eigenvectors (K, r, d) and values (K, r) of dense sigma by eigh."""
    values, vectors = torch.linalg.eigh(sigma)
    idx = KEYS[order](values).argsort(-1, descending=True)[:, :r]
    return vectors.gather(-1, idx.unsqueeze(1).expand(-1, sigma.shape[1], -1)).transpose(1, 2), values.gather(-1, idx)


def cosines(V, U):
    """Principal cosines (K, r) of orthonormal rows V (K, r, d) and U (K, r, d)."""
    return torch.linalg.svdvals(V @ U.transpose(1, 2))


# The narrow block 2r + 8 keeps the Krylov basis well below d at these small d (the default block
# would span the whole space within a few passes, which proves nothing about convergence).
def counting(apply, K, d, max_block):
    """Wrap apply: record the calls and assert it only ever sees (K, d, b) blocks with b <= max_block."""
    calls = []

    def wrapped(V):
        assert V.ndim == 3 and V.shape[:2] == (K, d) and V.shape[2] <= max_block, V.shape
        calls.append(tuple(V.shape))
        return apply(V)
    return wrapped, calls


@pytest.mark.parametrize("order", ["magnitude", "largest", "smallest"])
def test_explicit_spectrum_all_orders(order):
    K, d, r = 2, 400, 2
    g = torch.Generator().manual_seed(0)
    spectrum = torch.cat([torch.tensor([3.0, 2.0, -2.5, -1.8]), torch.linspace(-1, 1, d - 4)]).double()
    O = torch.linalg.qr(torch.randn(K, d, d, generator=g, dtype=torch.float64)).Q
    sigma = O @ torch.diag_embed(spectrum.expand(K, d)) @ O.transpose(1, 2)
    apply, calls = counting(lambda V: sigma @ V, K, d, 2 * r + 8)
    V, values, info = top_eigenpairs_matrix_free(apply, K, d, r, order, block=2 * r + 8)
    Vd, vd = dense_top(sigma, r, order)
    assert info["converged"] and info["passes"] == len(calls) <= 40
    assert V.shape == (K, r, d) and values.shape == (K, r)
    assert torch.allclose(values, vd, atol=1e-10)
    expected = {"magnitude": [3.0, -2.5], "largest": [3.0, 2.0], "smallest": [-2.5, -1.8]}[order]
    assert torch.allclose(values, torch.tensor(expected).double().expand(K, r), atol=1e-10)
    projector = lambda W: W.transpose(1, 2) @ W   # noqa: E731  (d x d only in the test's reference)
    assert (projector(V) - projector(Vd)).abs().max() < 1e-5


def multi_index(K, d, alpha, link, seed):
    """Stored data of K replicas: X (K, n, d), bounded weights w = tanh(y) (K, n), U (K, 2, d)."""
    g = torch.Generator().manual_seed(seed)
    n = int(alpha * d)
    X = torch.randn(K, n, d, generator=g, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(K, d, 2, generator=g, dtype=torch.float64)).Q.transpose(1, 2)
    z = X @ U.transpose(1, 2)
    y = (z.square() - 1).sum(-1) if link == "squares" else z[..., 0] * z[..., 1]
    return X, torch.tanh(y), U


def streaming_apply(X, w, chunk=256):
    """Sigmahat V = (1/n) sum_i w_i x_i (x_i^T V), one pass over the rows in chunks."""
    n = X.shape[1]

    def apply(V):
        out = torch.zeros_like(V)
        for s in range(0, n, chunk):
            x = X[:, s:s + chunk]
            out += x.transpose(1, 2) @ (w[:, s:s + chunk, None] * (x @ V))
        return out / n
    return apply


@pytest.mark.parametrize("link, alpha, orders", [
    ("squares", 4, ("largest", "magnitude")),   # signal eigenvalues above a visible gap
    ("product", 4, ("magnitude", "largest")),   # +-1 signal: magnitude needs both ends
    ("squares", 2, ("largest",)),               # harder: small gap to the bulk edge
])
def test_multi_index_principal_cosines(link, alpha, orders):
    K, d, r = 2, 384, 2
    X, w, U = multi_index(K, d, alpha, link, seed=1)
    apply, calls = counting(streaming_apply(X, w), K, d, 2 * r + 8)
    out, info = top_eigenpairs_matrix_free(apply, K, d, r, orders=orders, block=2 * r + 8, seed=3)
    assert info["converged"] and info["passes"] == len(calls) <= 40
    sigma = X.transpose(1, 2) @ (w.unsqueeze(-1) * X) / X.shape[1]
    for order in orders:
        V, values = out[order]
        Vd, vd = dense_top(sigma, r, order)
        assert torch.allclose(values, vd, atol=1e-10)
        assert (cosines(V, U) - cosines(Vd, U)).abs().max() < 1e-4
        assert not torch.allclose(cosines(V, U)[0], cosines(V, U)[1])   # replicas saw different data


@pytest.mark.parametrize("max_blocks", [3, 5, 100])
def test_thick_restarts_keep_the_basis_small_and_the_answer(max_blocks):
    """All three orders at once on a hard instance (small gap): the basis never holds more than
    max_blocks blocks, and the restarted solver agrees with the dense eigensolver."""
    K, d, r, b = 2, 384, 2, 2 * 2 + 8
    X, w, U = multi_index(K, d, 2, "product", seed=4)
    sizes = []
    apply = streaming_apply(X, w)
    out, info = top_eigenpairs_matrix_free(lambda V: sizes.append(V.shape[-1]) or apply(V), K, d, r,
                                           orders=("magnitude", "largest", "smallest"), block=b, seed=3,
                                           max_blocks=max_blocks, max_passes=200)
    assert info["converged"]
    assert info["basis_size"] <= max_blocks * b
    assert (info["restarts"] > 0) == (max_blocks < 100)
    sigma = X.transpose(1, 2) @ (w.unsqueeze(-1) * X) / X.shape[1]
    for order, (V, values) in out.items():
        Vd, vd = dense_top(sigma, r, order)
        assert torch.allclose(values, vd, atol=1e-9), order
        assert (cosines(V, U) - cosines(Vd, U)).abs().max() < 1e-5, order


def test_deterministic_and_reports_non_convergence():
    K, d, r = 2, 200, 2
    X, w, U = multi_index(K, d, 4, "product", seed=2)
    apply = streaming_apply(X, w)
    first = top_eigenpairs_matrix_free(apply, K, d, r, seed=5)
    second = top_eigenpairs_matrix_free(apply, K, d, r, seed=5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.warns(RuntimeWarning, match="not converged"):
        *_, info = top_eigenpairs_matrix_free(apply, K, d, r, max_passes=2)
    assert info["passes"] == 2 and not info["converged"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=11), "r must satisfy"),
    (dict(r=0), "r must satisfy"),
    (dict(order="biggest"), "order must be one of"),
    (dict(orders=("largest", "median")), "order must be one of"),
    (dict(block=1), "block must satisfy"),
    (dict(max_passes=0), "max_passes must be"),
    (dict(max_blocks=2), "max_blocks must be"),
])
def test_bad_input(kwargs, message):
    args = dict(apply=lambda V: V, K=1, d=10, r=2) | kwargs
    with pytest.raises(ValueError, match=message) as err:
        top_eigenpairs_matrix_free(**args)
    assert "magnitude" in str(err.value) or "<=" in str(err.value) or ">=" in str(err.value)
