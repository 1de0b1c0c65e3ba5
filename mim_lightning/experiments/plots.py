"""The PNG figures of a sweep (matplotlib, no pyplot): one figure per metric against the x key;
mean over seeds with the min-max band, one curve per combination of the other swept keys, the
strongest spectral estimator dashed in the same colour, failed runs marked, the chance level of the
plotted quantity dotted, alpha_c dash-dotted, and against data.alpha the Bayes-optimal limit's
smallest cosine (d -> inf), thin solid with open markers.

Takes rows (dicts of results.csv columns) and plain parameters; knows nothing of the grid. The
artists carry a gid (``network:<curve>``, ``spectral:<curve>``, ``failed:<curve>``, ``chance``,
``alpha_c:<link>:<r>``, ``bayes:<link>:<r>``) so that what a figure shows can be read back from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from mim_lightning.core import chance
from mim_lightning.experiments.tables import grouped


@dataclass(frozen=True)
class Figures:
    """What is plotted against what: the x key and its values in axis order, the keys whose
    combinations are curves, the number of seeds per point, notes on fixed settings for the titles,
    and ``alpha_c`` lines ({(link, r): value}, only meaningful when the x key is data.alpha), and
    the Bayes-optimal ``limits`` ({(link, r, relative noise): {"alpha": [...], "min_cosine": [...]}},
    drawn on the smallest principal cosine when the x key is data.alpha)."""

    x_key: str
    x_values: list
    curve_keys: list[str]
    n_seeds: int = 1
    fixed: list[str] = field(default_factory=list)
    thresholds: dict[tuple[str, int], float] | None = None
    limits: dict[tuple[str, int, float], dict] | None = None


@dataclass(frozen=True)
class Shape:
    """What the reference lines need to know of a run: d, r and the link."""

    d: int
    r: int
    link: str


@dataclass(frozen=True)
class Metric:
    column: str
    spectral: str | None  # the spectral baseline's column, or None
    ylabel: str
    chance: str  # kind of chance level (see ``reference``)
    optional: bool = False  # left out when no run has a value (the metric does not apply)


#: file stem -> what it plots
FIGURES = {
    "min_principal_cosine": Metric("min_principal_cosine", "spectral_min_principal_cosine",
                                   "smallest principal cosine", "min_cosine"),
    "subspace_mass": Metric("subspace_mass", "spectral_subspace_mass", "subspace mass |W U^T|_F^2 / |W|_F^2", "mass"),
    "test_rel_mse": Metric("test_rel_mse", None, "test MSE / Var(y)", "mse"),
    "weakest_eigenspace_mass_per_dim": Metric(
        "weakest_eigenspace_mass_per_dim", None, "|W P_E|_F^2 / (dim E |W|_F^2), E: M's weakest eigenspace",
        "mass_per_dim", optional=True),
}

LIMIT_MARKERS = ("D", "v", "P", "X", "*", "h")  # the Bayes-optimal curves, one per (link, r, noise)

REFERENCE_LABEL = {
    "min_cosine": "chance: median smallest cosine of a random r-dim subspace",
    "mass": "chance: r/d, expected mass of random weights",
    "mass_per_dim": "chance: 1/d, expected mass per dimension of random weights",
    "mse": "predicting the mean (1)",
}


def reference(kind: str, d: int, r: int) -> float:
    """The chance level of the plotted quantity (see ``chance``)."""
    if kind == "min_cosine":
        return chance.median_min_cosine(d, r)
    return {"mass": chance.chance_subspace_mass(d, r), "mass_per_dim": chance.mass_per_dimension(d), "mse": 1.0}[kind]


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _label(keys, values) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))


def _stats(rows, column):
    """(mean, min, max) over the runs that have a value (NaN when none has)."""
    values = [r[column] for r in rows if r.get(column) is not None]
    if not values:
        return math.nan, math.nan, math.nan
    return sum(values) / len(values), min(values), max(values)


def _finite(x, ys):
    """The points (x, *ys) whose first y is a number: lines join the points that exist."""
    kept = [(xi, *yi) for xi, *yi in zip(x, *ys, strict=True) if not math.isnan(yi[0])]
    return [list(c) for c in zip(*kept, strict=True)] if kept else [[] for _ in range(len(ys) + 1)]


def figures(rows: list[dict], shapes: dict[str, Shape], spec: Figures) -> dict[str, Figure]:
    """{file stem: figure} for the rows (each with the swept keys, the metric columns, ``status``
    and ``run``); ``shapes`` gives each run's (d, r, link) by its key. A metric that applies to no
    run (an optional one without values) has no figure."""
    out = {}
    for stem, metric in FIGURES.items():
        if metric.optional and all(row.get(metric.column) is None for row in rows):
            continue
        out[stem] = figure(rows, shapes, spec, metric)
    return out


def figure(rows: list[dict], shapes: dict[str, Shape], spec: Figures, metric: Metric) -> Figure:
    x_key, xs_all = spec.x_key, list(spec.x_values)
    curves = grouped(rows, spec.curve_keys)
    numeric = _numeric(xs_all)
    position = (lambda v: v) if numeric else xs_all.index
    log_x = numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    fig = Figure(figsize=(8, 5), dpi=120)   # about 1300 x 560 px with the legend: fits a TensorBoard page at actual size
    ax = fig.add_subplot()
    handles, refs, failed = [], {}, 0
    for i, (values, group) in enumerate(curves):
        color = colors[i % len(colors)]
        name = _label(spec.curve_keys, values) or "network"
        points = grouped(group, [x_key])
        points.sort(key=lambda p: xs_all.index(p[0][0]))
        x = [position(p[0][0]) for p in points]
        net = [_stats(p[1], metric.column) for p in points]
        fx, mean, lo, hi = _finite(x, list(zip(*net, strict=True)) if net else [[], [], []])
        ax.plot(fx, mean, "-o", color=color, ms=4, lw=1.8, gid=f"network:{name}")
        if spec.n_seeds > 1:
            ax.fill_between(fx, lo, hi, color=color, alpha=0.18, lw=0)
        if metric.spectral:  # from the data, not the network: shown wherever a run recorded it
            sx, smean = _finite(x, [[_stats(p[1], metric.spectral)[0] for p in points]])
            ax.plot(sx, smean, "--s", color=color, lw=1.4, ms=3, mfc="none", gid=f"spectral:{name}")
        bad = [(xi, sum(row["status"] != "ok" for row in p[1]), len(p[1])) for xi, p in zip(x, points, strict=True)]
        bad = [b for b in bad if b[1]]
        if bad:  # failed runs: an x at the bottom of the axes, "k/n" when k of the point's n seeds failed
            failed += sum(b[1] for b in bad)
            ax.plot([b[0] for b in bad], [0.02] * len(bad), "x", color=color, ms=7, mew=1.8, ls="none",
                    transform=ax.get_xaxis_transform(), clip_on=False, gid=f"failed:{name}")
            for xi, k, n in bad:
                if n > 1:
                    ax.annotate(f"{k}/{n}", (xi, 0.02), xycoords=ax.get_xaxis_transform(), xytext=(5, 2),
                                textcoords="offset points", fontsize=7, color=color)
        handles.append(Line2D([], [], color=color, marker="o", ms=4, lw=1.8, label=name))
        ref = tuple(reference(metric.chance, shapes[p[1][0]["run"]].d, shapes[p[1][0]["run"]].r) for p in points)
        refs.setdefault(ref, (x, color))
    for ref, (x, color) in refs.items():  # one grey line, or one per curve in its colour
        shade = "0.45" if len(refs) == 1 else color
        if len(set(ref)) == 1:
            ax.axhline(ref[0], color=shade, ls=":", lw=1.2, gid="chance")
        else:
            ax.plot(x, ref, ":", color=shade, lw=1.2, gid="chance")
    levels = {v for ref in refs for v in ref}
    value = f" = {levels.pop():.3g}" if len(levels) == 1 and metric.chance != "mse" else ""
    handles.append(Line2D([], [], color="0.45", ls=":", lw=1.2, label=REFERENCE_LABEL[metric.chance] + value))
    if metric.spectral:
        handles.append(Line2D([], [], color="0.2", ls="--", marker="s", ms=3, mfc="none", lw=1.4,
                              label="strongest spectral estimator (same D1; centred or not, 3 rankings)"
                              if metric.chance == "min_cosine" else "strongest spectral estimator: mass of its r eigenvectors"))
    if spec.n_seeds > 1:
        handles.append(Patch(color="0.2", alpha=0.18, label=f"min-max over {spec.n_seeds} seeds (line: mean)"))
    if failed:
        handles.append(Line2D([], [], color="0.2", marker="x", ms=7, mew=1.8, ls="none",
                              label=f"{failed} failed run(s): diverged or vanished (status column)"))
    if x_key == "data.alpha" and spec.thresholds:
        for (link, r), value in sorted(spec.thresholds.items()):
            if value is None or not math.isfinite(value):
                continue
            # in the colour of the one curve with this link and r, else dark grey
            owners = {i for i, (_, group) in enumerate(curves)
                      if any((shapes[row["run"]].link, shapes[row["run"]].r) == (link, r) for row in group)}
            shade = colors[owners.pop() % len(colors)] if len(owners) == 1 and len(spec.thresholds) > 1 else "0.15"
            ax.axvline(value, color=shade, ls="-.", lw=1.1, gid=f"alpha_c:{link}:{r}")
            handles.append(Line2D([], [], color=shade, ls="-.", lw=1.1,
                                  label=f"alpha_c = {value:.3g}, optimal spectral threshold ({link}, r={r})"))
    if x_key == "data.alpha" and spec.limits and metric.chance == "min_cosine":
        for k, ((link, r, noise), curve) in enumerate(sorted(spec.limits.items())):
            owners = {i for i, (_, group) in enumerate(curves)
                      if any((shapes[row["run"]].link, shapes[row["run"]].r) == (link, r) for row in group)}
            shade = colors[owners.pop() % len(colors)] if len(owners) == 1 else "0.1"
            marker = LIMIT_MARKERS[k % len(LIMIT_MARKERS)]  # tells black curves of several links apart
            ax.plot(curve["alpha"], curve["min_cosine"], "-", marker=marker, color=shade, lw=1.0, ms=3.5, mfc="none",
                    gid=f"bayes:{link}:{r}")
            handles.append(Line2D([], [], color=shade, ls="-", marker=marker, ms=3.5, mfc="none", lw=1.0,
                                  label=f"Bayes-optimal (d -> inf), {link}, r={r}: sqrt(min eig Q),"
                                        f" noise {noise:.3g} std g"))
    if log_x:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs_all, [f"{v:g}" for v in xs_all])
    if not numeric:
        ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
    if metric.chance in ("min_cosine", "mass"):
        ax.set_ylim(-0.02, 1.02)
    elif metric.chance == "mass_per_dim":
        ax.set_ylim(bottom=0.0)
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{metric.ylabel}\n({metric.column})")
    title = f"{metric.column} vs {x_key}"
    if spec.fixed:
        title += f"  ({', '.join(spec.fixed)})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    # outside the axes, on the right: never over the data
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              frameon=False)
    return fig


def plot_sweep(rows: list[dict], shapes: dict[str, Shape], spec: Figures | None, out: Path) -> list[Path]:
    """Write ``figures`` as PNGs into ``out``; their paths ([] when ``spec`` is None: only seed swept)."""
    if spec is None:
        return []
    paths = []
    for stem, fig in figures(rows, shapes, spec).items():
        path = Path(out) / f"{stem}.png"
        fig.savefig(path, bbox_inches="tight")
        paths.append(path)
    return paths
