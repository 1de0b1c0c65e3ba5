"""``mim sweep CONFIG.yaml``: a grid of runs (``grid``), trained where not done (``execute``), then
``OUT/results.csv`` and a table of means (``tables``) and PNG figures (``plots``).

Each run lives in ``OUT/runs/<key>/``, where ``<key>`` is a content hash of its resolved config, so
a finished run is never trained again. Runs that differ only in ``seed`` are trained together as
one batched run when the stage-2 solver allows it.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from mim_lightning.analysis import limit as limits_
from mim_lightning.analysis.theory import alpha_c
from mim_lightning.errors import Interrupted, MimError
from mim_lightning.experiments import board
from mim_lightning.experiments.execute import execute, rank_zero, seed_groups
from mim_lightning.experiments import sweep_folder
from mim_lightning.experiments.grid import MAX_RUNS, Sweep, load_sweep
from mim_lightning.experiments.sweep_folder import default_out
from mim_lightning.experiments.plots import Figures, Shape, plot_sweep
from mim_lightning.experiments.tables import rows_of, table, write_csv


def thresholds(sweep: Sweep) -> dict | None:
    """{(link, r): alpha_c} of the sweep's runs when the plots' x key is data.alpha, else None."""
    if sweep.x_key != "data.alpha":
        return None
    pairs = sorted({(run.cfg.data.link, run.cfg.data.r) for run in sweep.runs})
    return {pair: alpha_c(*pair) for pair in pairs}


LIMIT_ENV = "MIM_SWEEP_LIMIT"  # "0" (or false / no / off): no Bayes-optimal curve, unless asked for


def limit_wanted(limit: bool | None = None) -> bool:
    """Whether the plots draw the Bayes-optimal limit: ``limit`` when given, else the environment
    (MIM_SWEEP_LIMIT, on by default)."""
    if limit is not None:
        return bool(limit)
    return os.environ.get(LIMIT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


LIMIT_FOLDER = "limit"  # OUT/limit/: the sweep's copy of the Bayes-optimal limits it drew (``analysis.limit_cache``)
LIMIT_STAGE = "the Bayes-optimal limit"  # where a stop during the limit step came (``errors.Interrupted``)


def limits(sweep: Sweep, **options) -> dict | None:
    """{(link, r, relative noise): {"alpha": [...], "min_cosine": [...]}}: the Bayes-optimal limit
    (d -> inf, ``analysis.limit.bayes_optimal``, cached) at the sweep's alpha values for each
    (link, r <= 3, data.noise) of its runs, when the plots' x key is data.alpha, else None. The
    noise is the runs' data.noise relative to std g (0 for noiseless data, as the runs have it); the
    limit does not depend on d, the loss or the network. A (link, r) the state evolution does not
    cover (r > 3, a link it rejects) is left out. ``options`` (folder, echo, stop) go to
    ``bayes_optimal``."""
    if sweep.x_key != "data.alpha":
        return None
    alphas: dict[tuple, set] = {}
    for run in sweep.runs:
        data = run.cfg.data
        alphas.setdefault((data.link, data.r, data.noise), set()).add(float(data.alpha))
    out = {}
    for (link, r, noise), values in sorted(alphas.items()):
        if r > limits_.MAX_LIMIT_R:
            continue
        try:
            relative = noise / limits_.link_std(link, r) if noise else 0.0
            result = limits_.bayes_optimal(link, r, tuple(sorted(values)), relative, **options)
        except MimError:
            continue
        out[(link, r, relative)] = {"alpha": list(result["alpha"]),
                                    "min_cosine": [cos[-1] for cos in result["cosines"]]}
    return out


def figures_of(sweep: Sweep, limit: bool | None = None, **options) -> Figures | None:
    """What the sweep's figures plot (None when only seed is swept: no figures); ``limit``: with the
    Bayes-optimal curve (``limits``, given ``options``; default: ``limit_wanted``)."""
    x_key = sweep.x_key
    if x_key is None:
        return None
    fixed = [f"{k}={v}" for k, v in (("data.link", sweep.base.data.link), ("data.d", sweep.base.data.d),
                                     ("data.r", sweep.base.data.r))
             if k not in sweep.keys and not any(k in bundle for bundle in sweep.variants.values())]
    return Figures(x_key=x_key, x_values=list(sweep.axes[x_key]),
                   curve_keys=[k for k in sweep.keys if k not in ("seed", x_key)],
                   n_seeds=len(sweep.axes.get("seed", [sweep.base.seed])), fixed=fixed, thresholds=thresholds(sweep),
                   limits=limits(sweep, **options) if limit_wanted(limit) else None)


def shapes_of(sweep: Sweep) -> dict[str, Shape]:
    """{run key: (d, r, link)} for the figures' reference lines."""
    return {run.key: Shape(run.cfg.data.d, run.cfg.data.r, run.cfg.data.link) for run in sweep.runs}


def run_sweep(path: str | Path, overrides=(), out: str | Path | None = None, echo=click.echo, stop=None,
              limit: bool | None = None, max_runs: int = MAX_RUNS, trainer=None) -> dict:
    """``mim sweep``: validate, train what is missing, write results.csv, plots and a table.
    ``stop`` (a StopRequest) ends training at a step boundary on SIGINT / SIGTERM, and the limit
    step within a second (Interrupted, stage LIMIT_STAGE); ``limit``: draw the Bayes-optimal limit
    on the plots against data.alpha (default: ``limit_wanted``);
    ``max_runs``: a grid of more runs is refused before any is built (``grid.load_sweep``).
    ``trainer``: who trains the runs (``execute.execute``; default: this process).
    Returns {"sweep", "rows", "results", "plots", "trained"}."""
    sweep = load_sweep(path, overrides, max_runs)
    out = Path(out) if out is not None else default_out(path, overrides)
    zero = rank_zero()
    if not zero:
        echo = lambda *args, **kwargs: None  # noqa: E731
    else:
        sweep_folder.claim(out, sweep)
    echo(f"{len(sweep.runs)} runs ({len(seed_groups(sweep.runs))} group(s) of seeds) in {out / 'runs'}", err=True)
    results, trained = execute(sweep, out, stop=stop, trainer=trainer)
    rows = rows_of(sweep, results)
    done = {"sweep": sweep, "rows": rows, "results": results, "plots": [], "trained": trained}
    if not zero:
        return done
    write_csv(sweep, rows, out / "results.csv")
    try:  # the limit step: cached in OUT/limit and the user's cache; a stop acts within a second
        figures = figures_of(sweep, limit, folder=out / LIMIT_FOLDER, echo=lambda line: echo(line, err=True),
                             stop=None if stop is None else lambda: stop.check(LIMIT_STAGE))
    except KeyboardInterrupt:  # a second signal
        raise Interrupted(getattr(stop, "signal_name", None) or "SIGINT", LIMIT_STAGE, None, out) from None
    done["plots"] = plots = plot_sweep(rows, shapes_of(sweep), figures, out)
    summary = table(sweep, rows)
    board.add_figures(out, plots, summary)
    echo(summary)
    written = ", ".join(p.name for p in plots) if plots else "no plots (only seed is swept)"
    echo(f"wrote {out / 'results.csv'}; plots: {written}")
    failed = sum(row["status"] != "ok" for row in rows)
    if failed == len(rows):
        raise MimError(f"all {failed} runs of the sweep failed; the first: {rows[0]['status']}")
    if failed:
        echo(f"Warning: {failed} of {len(rows)} runs failed (status column of results.csv, runs/<run>/status.json;"
             f" delete their folders in {out / 'runs'} to retry them)", err=True)
    return done
