"""The Bayes-optimal limit for a named link (docs/theory.md#bayes-optimal-limit): the fixed points
of AMP's state evolution (``core.state_evolution``) at each sample ratio alpha, kept in this process
and on disk (``limit_cache``)."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

from mim_lightning import __version__
from mim_lightning.analysis import limit_cache
from mim_lightning.analysis.common import check_r, memoize, resolve
from mim_lightning.config import BIG, LARGE
from mim_lightning.config_yaml import short
from mim_lightning.core import state_evolution
from mim_lightning.core.state_evolution import bayes_optimal_overlap, check_inputs, method_key
from mim_lightning.errors import MimError
from mim_lightning.plugins.manager import get_registry

MAX_LIMIT_R = 3  # the state evolution's tensor quadrature covers r <= 3
# Sample ratios as a run could use them: data.alpha <= 2**24, and alpha * d >= 2 samples with d <= 2**24.
MIN_ALPHA, MAX_ALPHA = 2 / BIG, float(BIG)
MAX_ALPHAS = 100  # --alphas lists at most 100 ratios (each is a state-evolution solve of seconds)
MAX_NOISE = LARGE  # relative label noise, bounded like data.noise

_memory: dict[str, dict] = {}  # this process's results, by the canonical JSON of their cache key


def bayes_optimal(link, r: int, alphas: tuple[float, ...], noise: float = 0.01, *, folder=None, echo=None,
                  stop=None) -> dict:
    """``bayes_optimal_overlap`` for a registered link name (or a callable) at ``alphas``, with
    ``link`` added: per alpha the overlap Q, its eigenvalues, the principal cosines sqrt(eig Q) of
    the Bayes-optimal estimate, the Bayes-optimal test error and a conservative error estimate;
    ``noise`` is relative to std g(z).

    A link whose code is known by name and version (``cache_key``) has its results kept in this
    process and on disk: in ``folder`` (a sweep's) when given and in the user's cache folder
    (``limit_cache.user_folder``), read from the first that holds a valid file and copied to the
    others; any other link is computed at each call. ``echo`` (a function taking one line) hears
    where a stored result came from, or a line per alpha as it is computed; ``stop()`` is called
    before every chunk of the quadrature (it raises to stop). Returns a copy the caller may
    change."""
    name, fn, meta = resolve("link", link)
    r = check_r(name, r, meta)
    if r > MAX_LIMIT_R:
        raise MimError(f"the Bayes-optimal state evolution covers r <= {MAX_LIMIT_R} (tensor quadrature), got r = {r}")
    _, alphas, noise = check_inputs(fn, r, alphas, noise)  # MimError naming a bad alpha or noise
    say = echo or (lambda line: None)
    what = f"Bayes-optimal limit of {name} (r = {r}, noise {noise:g}) at {len(alphas)} alpha(s)"

    def compute() -> dict:
        say(f"{what}: computing (state evolution)")
        start = time.perf_counter()
        return {"link": name, **bayes_optimal_overlap(fn, r, alphas, noise, stop=stop,
                                                       progress=lambda row: say(alpha_line(row, start)))}

    key = None if callable(link) else cache_key(name, r, alphas, noise)
    if key is None:
        return compute()
    memo = limit_cache.canonical(key)
    folders = [*([Path(folder)] if folder is not None else []), limit_cache.user_folder()]
    if memo in _memory:
        lacking = [f for f in folders if not (f / limit_cache.file_name(key)).is_file()]
    else:
        found, lacking = limit_cache.read(folders, key)
        if found is None:
            _memory[memo] = compute()
        else:
            _memory[memo], path = found
            say(f"{what}: from the cache {path}")
    limit_cache.write(lacking, key, _memory[memo])
    return copy.deepcopy(_memory[memo])


def cache_key(name: str, r: int, alphas, noise: float) -> dict | None:
    """The key of a registered link's results on disk: the link's name and where its code comes
    from (plugin, distribution and version; a built-in's version is mim-lightning's), r, the
    alphas, the noise and the method (``state_evolution.method_key``). None when the code is not
    identified by a version (a plugin registered in this process, or not from a distribution)."""
    component = get_registry().get("link", name)
    info = get_registry().plugins.get(component.plugin)
    version = None if info is None else info.version or (__version__ if info.builtin else None)
    if version is None:
        return None
    return dict(format=limit_cache.FORMAT, link=name, plugin=component.plugin, distribution=info.distribution,
                version=version, r=r, alphas=[float(a) for a in alphas], noise=float(noise), method=method_key(r))


def alpha_line(row: dict, start: float) -> str:
    """'  alpha = 2: cosines 0.907, 0.907 (error 0.05, 14 iterations; 3.2 s)': one alpha done."""
    cosines = ", ".join(f"{c:.3f}" for c in row["cosines"])
    return (f"  alpha = {row['alpha']:g}: cosines {cosines} (error {row['error']:.2g}, {row['iterations']} iterations;"
            f" {time.perf_counter() - start:.1f} s)")


@memoize
def link_std(link, r: int) -> float:
    """std g(z), z ~ N(0, I_r), by the state evolution's own quadrature: the scale of its relative
    ``noise`` (an absolute label-noise std sigma is ``sigma / link_std`` there)."""
    name, fn, meta = resolve("link", link)
    r = check_r(name, r, meta)
    if r > MAX_LIMIT_R:
        raise MimError(f"the Bayes-optimal state evolution covers r <= {MAX_LIMIT_R} (tensor quadrature), got r = {r}")
    return state_evolution.link_std(fn, r)


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
