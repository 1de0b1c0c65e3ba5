"""The PNG plots of a sweep (matplotlib, Agg backend): one figure per metric against the first
swept key that is not ``seed``; mean over seeds with the min-max band, one curve per combination of
the other swept keys, the spectral baseline dashed in the same colour, and reference levels."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

#: file stem -> (network column, spectral column or None, y label, reference level)
FIGURES = {
    "min_principal_cosine": ("min_principal_cosine", "spectral_min_principal_cosine",
                             "smallest principal cosine", "cosine"),
    "subspace_mass": ("subspace_mass", "spectral_subspace_mass", "subspace mass |W U^T|_F^2 / |W|_F^2", "mass"),
    "test_rel_mse": ("test_rel_mse", None, "test MSE / Var(y)", "mse"),
    "weakest_direction_mass": ("weakest_direction_mass", None,
                               "mass along M's weakest eigenvector |W v_r|^2 / |W|_F^2", "mass"),
}


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _label(keys, values) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values))


def _stats(rows, column):
    """(mean, min, max) over the runs that finished (NaN when none did: matplotlib leaves a gap)."""
    values = [r[column] for r in rows if r[column] is not None]
    if not values:
        return math.nan, math.nan, math.nan
    return sum(values) / len(values), min(values), max(values)


def _reference(kind: str, d: int, r: int) -> float:
    """Chance levels: a random r-dimensional subspace of R^d has squared cosines ~ r/d (the RMS
    cosine sqrt(r/d)) and captures mass r/d of W; predicting the mean gives relative MSE 1."""
    return {"cosine": math.sqrt(r / d), "mass": r / d, "mse": 1.0}[kind]


REFERENCE_LABEL = {
    "cosine": "chance: sqrt(r/d), RMS cosine of a random r-dim subspace",
    "mass": "chance: r/d, mass of a random r-dim subspace",
    "mse": "predicting the mean (1)",
}


def plot_sweep(sweep, rows: list[dict], out: Path, thresholds=None) -> list[Path]:
    """Write one PNG per metric into ``out``; returns their paths ([] when only seed is swept).

    ``thresholds``: {(link, r): alpha_c}, drawn as vertical lines when the x key is data.alpha."""
    from mim_lightning.experiments.sweep import grouped

    x_key = sweep.x_key
    if x_key is None:
        return []
    others = [k for k in sweep.keys if k not in ("seed", x_key)]
    curves = grouped(rows, others)
    xs_all = list(sweep.axes[x_key])
    numeric = _numeric(xs_all)
    position = (lambda v: v) if numeric else (lambda v: xs_all.index(v))
    log_x = numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10
    n_seeds = len(sweep.axes.get("seed", [sweep.base.seed]))
    fixed = [f"{k}={v}" for k, v in (("data.link", sweep.base.data.link), ("data.d", sweep.base.data.d),
                                      ("data.r", sweep.base.data.r)) if k not in sweep.keys]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []
    for stem, (column, spectral, ylabel, kind) in FIGURES.items():
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
        handles = []
        refs = {}
        for i, (values, group) in enumerate(curves):
            color = colors[i % len(colors)]
            points = grouped(group, [x_key])
            points.sort(key=lambda p: xs_all.index(p[0][0]))
            x = [position(p[0][0]) for p in points]
            net = [_stats(p[1], column) for p in points]
            ax.plot(x, [m for m, _, _ in net], "-o", color=color, ms=4, lw=1.8)
            if n_seeds > 1:
                ax.fill_between(x, [lo for _, lo, _ in net], [hi for _, _, hi in net], color=color, alpha=0.18, lw=0)
            if spectral:
                ax.plot(x, [_stats(p[1], spectral)[0] for p in points], "--", color=color, lw=1.4)
            name = _label(others, values) or "network"
            handles.append(Line2D([], [], color=color, marker="o", ms=4, lw=1.8, label=name))
            ref = tuple(_reference(kind, p[1][0]["_d"], p[1][0]["_r"]) for p in points)
            refs.setdefault(ref, (x, color))
        for ref, (x, color) in refs.items():  # one grey line, or one per curve in its colour
            shade = "0.45" if len(refs) == 1 else color
            if len(set(ref)) == 1:
                ax.axhline(ref[0], color=shade, ls=":", lw=1.2)
            else:
                ax.plot(x, ref, ":", color=shade, lw=1.2)
        levels = {v for ref in refs for v in ref}
        value = f" = {levels.pop():.3g}" if len(levels) == 1 and kind != "mse" else ""
        handles.append(Line2D([], [], color="0.45", ls=":", lw=1.2, label=REFERENCE_LABEL[kind] + value))
        if spectral:
            handles.append(Line2D([], [], color="0.2", ls="--", lw=1.4,
                                  label="spectral baseline (same D1)" if kind == "cosine"
                                  else "spectral baseline: mass of its r eigenvectors"))
        if n_seeds > 1:
            handles.append(Patch(color="0.2", alpha=0.18, label=f"min-max over {n_seeds} seeds (line: mean)"))
        if x_key == "data.alpha" and thresholds:
            for (link, r), value in sorted(thresholds.items()):
                if value is not None and math.isfinite(value):
                    # in the colour of the one curve with this link and r, else dark grey
                    owners = {i for i, (_, group) in enumerate(curves)
                              if any((row["_link"], row["_r"]) == (link, r) for row in group)}
                    shade = colors[owners.pop() % len(colors)] if len(owners) == 1 and len(thresholds) > 1 else "0.15"
                    ax.axvline(value, color=shade, ls="-.", lw=1.1)
                    handles.append(Line2D([], [], color=shade, ls="-.", lw=1.1,
                                          label=f"alpha_c = {value:.3g}, optimal spectral threshold ({link}, r={r})"))
        if log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(xs_all, [f"{v:g}" for v in xs_all])
        if not numeric:
            ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
        if kind in ("cosine", "mass"):
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(x_key)
        ax.set_ylabel(f"{ylabel}\n({column})")
        title = f"{column} vs {x_key}"
        if fixed:
            title += f"  ({', '.join(fixed)})"
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(handles=handles, fontsize=7.5, loc="best", framealpha=0.85)
        fig.tight_layout()
        path = Path(out) / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
