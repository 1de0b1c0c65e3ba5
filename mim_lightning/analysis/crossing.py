"""Where a recovery curve crosses a level, with seed-bootstrap confidence intervals (the limit table
of scripts/limit_table.py, experiment 6 of docs/experiments.md). Pure Python, no torch.

A mean-over-seeds curve of the smallest principal cosine against alpha need not be monotone (a
seed that finds the subspace at one alpha and loses it at the next), so the crossing used here is
the alpha *after which the curve stays at or above the level*: the linear interpolation between the
last grid point below the level and the point after it. For an increasing curve it is the usual
first crossing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

INF = math.inf


def number(text) -> float | None:
    """A finite float from a CSV cell, else None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def stays_above(alphas: Sequence[float], values: Sequence[float], level: float) -> float:
    """The alpha after which the piecewise-linear curve (alphas, values) stays >= ``level``: with i
    the last point below the level, the interpolated crossing between points i and i + 1. The first
    alpha when no point is below (censored: the crossing is at or before it); ``math.inf`` when the
    last point is below (the curve does not stay above within the grid)."""
    points = sorted(zip(alphas, values))
    if not points:
        return INF
    below = [i for i, (_, v) in enumerate(points) if v < level]
    if not below:
        return points[0][0]
    i = below[-1]
    if i == len(points) - 1:
        return INF
    (a0, c0), (a1, c1) = points[i], points[i + 1]
    return a0 + (level - c0) * (a1 - a0) / (c1 - c0)


def mean_curve(curves: Sequence[dict[float, float]]) -> tuple[list[float], list[float]]:
    """(alphas, mean over the curves that have a value there) of curves given as {alpha: value}."""
    alphas = sorted({a for curve in curves for a in curve})
    means = []
    for a in alphas:
        values = [curve[a] for curve in curves if a in curve]
        means.append(sum(values) / len(values))
    return alphas, means


def bootstrap(samples: Sequence, statistic: Callable[[list], float], resamples: int = 2000,
              seed: int = 0) -> list[float]:
    """``statistic`` of ``resamples`` bootstrap resamples of ``samples`` (drawn with replacement,
    each of the original size, from random.Random(seed)): here the samples are seeds, each a whole
    curve, so a resample keeps a seed's values at every alpha together."""
    rng = random.Random(seed)
    n = len(samples)
    return [statistic([samples[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples)]


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of ``values`` by linear interpolation between order statistics (numpy's
    default): position q (n - 1) in the sorted list; an infinite neighbour makes it infinite."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    if lo == hi or ordered[lo] == ordered[hi]:
        return ordered[lo]
    if math.isinf(ordered[lo]) or math.isinf(ordered[hi]):
        return ordered[hi] if position - lo > 0 else ordered[lo]
    return ordered[lo] + (position - lo) * (ordered[hi] - ordered[lo])


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of a bootstrap distribution: its (1 - c) / 2 and (1 + c) / 2 quantiles."""
    tail = (1 - confidence) / 2
    return quantile(values, tail), quantile(values, 1 - tail)


def solve_level(f: Callable[[float], float], lo: float, hi: float, level: float, xtol: float = 1e-3,
                max_evaluations: int = 40) -> tuple[float, int]:
    """(alpha, evaluations): the root of f(alpha) = level in [lo, hi], where f(lo) < level <= f(hi),
    by the Illinois variant of regula falsi (superlinear for a smooth f, and it keeps a bracket, so
    a curve with a jump converges to the jump), stopped when the bracket is narrower than xtol."""
    flo, fhi = f(lo) - level, f(hi) - level
    evaluations, side = 2, 0
    if not flo < 0 <= fhi:
        raise ValueError(f"no bracket: f({lo:g}) - level = {flo:g}, f({hi:g}) - level = {fhi:g}")
    while hi - lo > xtol and evaluations < max_evaluations:
        x = (lo * fhi - hi * flo) / (fhi - flo)
        x = min(max(x, lo + xtol / 4), hi - xtol / 4)  # a step at least xtol / 4 inside the bracket
        fx = f(x) - level
        evaluations += 1
        if fx < 0:
            lo, flo = x, fx
            if side == -1:
                fhi /= 2
            side = -1
        else:
            hi, fhi = x, fx
            if side == 1:
                flo /= 2
            side = 1
    return (lo * fhi - hi * flo) / (fhi - flo) if fhi != flo else (lo + hi) / 2, evaluations
