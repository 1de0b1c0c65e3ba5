"""The Bayes-optimal limit for a named link (docs/theory.md#bayes-optimal-limit): the fixed points
of AMP's state evolution (``core.state_evolution``) at each sample ratio alpha, cached like the
other population quantities."""

from __future__ import annotations

import math

from mim_lightning.analysis.common import check_r, memoize, resolve
from mim_lightning.config import BIG, LARGE
from mim_lightning.config_yaml import short
from mim_lightning.core.state_evolution import RESOLUTION, _inspect, _setup, bayes_optimal_overlap
from mim_lightning.errors import MimError

MAX_LIMIT_R = 3  # the state evolution's tensor quadrature covers r <= 3
# Sample ratios as a run could use them: data.alpha <= 2**24, and alpha * d >= 2 samples with d <= 2**24.
MIN_ALPHA, MAX_ALPHA = 2 / BIG, float(BIG)
MAX_ALPHAS = 100  # --alphas lists at most 100 ratios (each is a state-evolution solve of seconds)
MAX_NOISE = LARGE  # relative label noise, bounded like data.noise


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
    """'0.5,1,2' -> (0.5, 1.0, 2.0): at most MAX_ALPHAS distinct numbers in [MIN_ALPHA, MAX_ALPHA],
    in the order given; a MimError naming --alphas and the culprit otherwise (an empty element, a
    word, a value out of range, a repeat)."""
    parts = text.split(",")
    usage = f"give up to {MAX_ALPHAS} distinct comma-separated numbers in [{MIN_ALPHA:.3g}, {MAX_ALPHA:.8g}], e.g. --alphas 0.5,1,2"
    if len(parts) > MAX_ALPHAS:
        raise MimError(f"--alphas lists {len(parts)} values; {usage}")
    values: list[float] = []
    for i, part in enumerate(parts, 1):
        if not part.strip():
            raise MimError(f"--alphas {short(text)}: value {i} is empty; {usage}")
        try:
            value = float(part)
        except ValueError:
            raise MimError(f"--alphas {short(text)}: {short(part.strip())} is not a number; {usage}") from None
        if not MIN_ALPHA <= value <= MAX_ALPHA:  # nan and inf included
            raise MimError(f"--alphas {short(text)}: {value:g} is outside [{MIN_ALPHA:.3g}, {MAX_ALPHA:.8g}], the sample"
                           " ratios a run can use (data.alpha <= 2**24 and data.alpha * data.d >= 2 with data.d <= 2**24)")
        if value in values:
            raise MimError(f"--alphas {short(text)}: {value:g} is given twice; {usage}")
        values.append(value)
    return tuple(values)


def parse_noise(text: str) -> float:
    """The relative label noise of ``--noise``: a number in [0, MAX_NOISE]; a MimError naming
    --noise otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_NOISE:  # nan and inf included
        raise MimError(f"--noise {short(text)}: give a number from 0 (noiseless) to {MAX_NOISE:g},"
                       " relative to std g(z), e.g. --noise 0.01")
    return value
