"""Shared pieces of the population quantities: component resolution by name, the r check, a
cache keyed by what a name means now, checked evaluation of links and losses, Gauss-Hermite rules."""

from __future__ import annotations

import copy
import functools
from typing import Callable

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss

from mim_lightning.core.contracts import autograd_derivative, link_values, loss_values
from mim_lightning.core.limits import MAX_R
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
ALPHA_MAX_R = 6

ALPHA_SAMPLES = 2**21
ALPHA_BINS = 200
ALPHA_MIN_BIN = 16
ALPHA_REPLICATES = 8



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
