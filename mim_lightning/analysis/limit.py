"""The Bayes-optimal limit for a named link (docs/theory.md#bayes-optimal-limit): the fixed points
of AMP's state evolution (``core.state_evolution``) at each sample ratio alpha, cached like the
other population quantities."""

from __future__ import annotations

from mim_lightning.analysis.common import check_r, memoize, resolve
from mim_lightning.core.state_evolution import RESOLUTION, _inspect, _setup, bayes_optimal_overlap
from mim_lightning.errors import MimError

MAX_LIMIT_R = 3  # the state evolution's tensor quadrature covers r <= 3


@memoize
def bayes_optimal(link, r: int, alphas: tuple[float, ...], noise: float = 0.01) -> dict:
    """``bayes_optimal_overlap`` for a registered link name (or a callable) at ``alphas``, with
    ``link`` added: per alpha the overlap Q, its eigenvalues, the principal cosines sqrt(eig Q) of
    the Bayes-optimal estimate, the Bayes-optimal test error and a conservative error estimate;
    ``noise`` is relative to std g(z)."""
    name, fn, meta = resolve("link", link)
    r = check_r(name, r, meta)
    if r > MAX_LIMIT_R:
        raise MimError(f"the Bayes-optimal state evolution covers r <= {MAX_LIMIT_R} (tensor quadrature), got r = {r}")
    return {"link": name, **bayes_optimal_overlap(fn, r, tuple(alphas), noise)}


@memoize
def link_std(link, r: int) -> float:
    """std g(z), z ~ N(0, I_r), by the state evolution's own quadrature: the scale of its relative
    ``noise`` (an absolute label-noise std sigma is ``sigma / link_std`` there)."""
    name, fn, meta = resolve("link", link)
    r = check_r(name, r, meta)
    if r > MAX_LIMIT_R:
        raise MimError(f"the Bayes-optimal state evolution covers r <= {MAX_LIMIT_R} (tensor quadrature), got r = {r}")
    return _inspect(fn, _setup(r, RESOLUTION[r]))


def alpha_at_cosine(alphas, cosines, level: float = 0.5) -> float | None:
    """The smallest alpha at which a curve of (increasing) cosines reaches ``level``, by linear
    interpolation between the two points around the crossing; None when it never does."""
    points = sorted(zip(alphas, cosines))
    for (a0, c0), (a1, c1) in zip(points, points[1:]):
        if c0 < level <= c1:
            return a0 + (level - c0) * (a1 - a0) / (c1 - c0)
    if points and points[0][1] >= level:
        return points[0][0]
    return None


def parse_alphas(text: str) -> tuple[float, ...]:
    """'0.5,1,2' -> (0.5, 1.0, 2.0); a MimError naming --alphas otherwise."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise MimError(f"--alphas {text!r}: give comma-separated numbers > 0, e.g. --alphas 0.5,1,2") from None
    if not values or not all(v > 0 and v < float("inf") for v in values):
        raise MimError(f"--alphas {text!r}: give comma-separated numbers > 0, e.g. --alphas 0.5,1,2")
    return values
