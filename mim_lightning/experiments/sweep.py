"""Grids of runs: ``mim sweep CONFIG.yaml``.

A sweep file is a normal config plus a ``sweep:`` mapping of dotted keys to lists of values; the
runs are the cartesian product of the lists (in the order the keys are written). Each run lives in
``OUT/runs/<key>/``, where ``<key>`` is a content hash of its resolved config, so a run whose
``results.json`` is already there is never trained again. Runs that differ only in ``seed`` are
trained together as one batched run (``runner.train_replicas``) when the stage-2 solver allows
it. The sweep ends with ``OUT/results.csv`` (one row per run), PNG plots and a table of means.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from mim_lightning.config import Config, all_keys, build_config, flatten, parse_override, read_yaml, set_dotted
from mim_lightning.errors import MimError
from mim_lightning.plugins.registry import closest
from mim_lightning.analysis.theory import alpha_c

RESULTS = "results.json"
FAILED = "failed.json"  # a run that stopped with an error (diverged, vanished): cached like a result

#: the results.csv columns after the varied keys (``run`` is last)
METRICS = [
    "min_principal_cosine",
    "mean_principal_cosine",
    "subspace_mass",
    "test_rel_mse",
    "spectral_min_principal_cosine",
    "spectral_mean_principal_cosine",
    "spectral_subspace_mass",
    "spectral_largest_min_principal_cosine",
    "weakest_direction_mass",
    "stage2_loss",
]


# --------------------------------------------------------------------------- the grid


@dataclass
class Run:
    """One point of the grid: its swept values (dotted key -> value), resolved config and key."""

    values: dict[str, Any]
    cfg: Config
    key: str

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in self.values.items())


@dataclass
class Sweep:
    base: Config
    axes: dict[str, list]  # swept key -> its values, in the order of the sweep file
    runs: list[Run] = field(default_factory=list)
    variants: dict[str, dict] = field(default_factory=dict)  # variant name -> its dotted overrides

    @property
    def keys(self) -> list[str]:
        return list(self.axes)

    @property
    def x_key(self) -> str | None:
        """The key plots use as x axis: the first swept key other than ``seed`` and ``variant``
        (variants become curves), else ``variant``."""
        return next((k for k in self.keys if k not in ("seed", "variant")), "variant" if self.variants else None)


def sweep_section(sweep: Sweep) -> dict:
    """The ``sweep:`` mapping as written back to DIR/sweep.yaml (variants as their bundles)."""
    section = {k: v for k, v in sweep.axes.items() if k != "variant"}
    if sweep.variants:
        section = {"variant": [{"name": n, **o} for n, o in sweep.variants.items()], **section}
    return section


def canonical(cfg: Config) -> str:
    """The canonical JSON of a resolved config (sorted keys, no spaces)."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def run_key(cfg: Config) -> str:
    """A run's directory name: the first 16 hex digits of sha256 of its canonical config."""
    return hashlib.sha256(canonical(cfg).encode()).hexdigest()[:16]


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


def read_sweep_tree(path: str | Path, overrides=()) -> tuple[dict, dict[str, list], dict[str, dict]]:
    """(base config tree, {dotted key: values}, {variant name: overrides}) of a sweep file with
    ``--set`` overrides applied to the base. The ``sweep:`` mapping may be written flat
    (``data.alpha: [1, 2]``) or nested; its optional ``variant`` entry is a list of named bundles of
    overrides (``- {name: joint, stage1.joint: true}``), swept like one key called ``variant``."""
    tree = read_yaml(path)
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    if "sweep" not in tree:
        raise MimError(f"sweep file {str(path)!r} has no 'sweep:' mapping of keys to lists of values"
                       " (for a single run use mim train)")
    grid = tree.pop("sweep")
    if not isinstance(grid, dict) or not grid:
        raise MimError(f"sweep file {str(path)!r}: 'sweep' must be a non-empty mapping of config keys to lists"
                       f" of values, e.g. sweep: {{data.alpha: [1, 2, 4]}} (got {grid!r})")
    valid = all_keys()
    sections = {k.rsplit(".", 1)[0] for k in valid if "." in k}
    variants = read_variants(grid.pop("variant", None), valid)
    axes = {"variant": list(variants)} if variants else {}
    for key, values in flatten(grid).items():
        key = str(key)
        if key not in valid:
            if key in sections:
                raise MimError(f"sweep key {key!r} is a section, not a config key; sweep one of its keys, e.g. {key}.{_first_in(key, valid)}")
            raise MimError(f"sweep key {key!r} is not a config key{closest(key, valid)}")
        if not isinstance(values, list):
            raise MimError(f"sweep key {key!r} must map to a list of values, e.g. {key}: [{_show(values)}] (got {_show(values)})")
        if not values:
            raise MimError(f"sweep key {key!r} has an empty list of values")
        for i, value in enumerate(values):
            if any(_same(value, other) for other in values[:i]):
                raise MimError(f"sweep key {key!r} lists the value {_show(value)} twice")
        axes[key] = values
    return tree, axes, variants


def read_variants(entries, valid) -> dict[str, dict]:
    """{name: {dotted key: value}} from the ``variant`` list of a sweep (validated, one line per error)."""
    if entries is None:
        return {}
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise MimError("sweep 'variant' must be a non-empty list of mappings, e.g. - {name: joint, stage1.joint: true}")
    variants = {}
    for entry in entries:
        overrides = flatten(dict(entry))
        name = overrides.pop("name", None)
        if not isinstance(name, str) or not name:
            raise MimError(f"sweep variant {entry!r} needs a 'name' (a non-empty string)")
        if name in variants:
            raise MimError(f"sweep variant name {name!r} is used twice")
        for key in overrides:
            if key not in valid:
                raise MimError(f"sweep variant {name!r}: {key!r} is not a config key{closest(key, valid)}")
        variants[name] = overrides
    return variants


def _first_in(section: str, keys) -> str:
    return next(k for k in keys if k.startswith(section + ".")).removeprefix(section + ".")


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (_number(a) and _number(b) and a == b)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_sweep(path: str | Path, overrides=()) -> Sweep:
    """Read and validate a sweep file: the base config, every swept value on its own, then every run
    of the grid (one-line MimErrors naming the key and value, before anything is trained)."""
    from mim_lightning.training.run import validate

    tree, axes, variants = read_sweep_tree(path, overrides)
    base = build_config(tree)

    def apply(one: dict, key: str, value) -> None:
        for k, v in (variants[value].items() if key == "variant" else [(key, value)]):
            set_dotted(one, k, v)

    for key, values in axes.items():  # each value on its own, so the error names the culprit
        for value in values:
            one = copy.deepcopy(tree)
            apply(one, key, value)
            try:
                build_config(one)
            except MimError as exc:
                if key == "variant" or f"{key!r}" in str(exc):
                    raise MimError(f"sweep {key} = {_show(value)}: {exc}") from None
    sweep = Sweep(base, axes, variants=variants)
    seen, validated = {}, set()
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        one = copy.deepcopy(tree)
        for key, value in values.items():
            apply(one, key, value)
        run = Run(values, None, "")
        try:
            run.cfg = build_config(one)
            group = canonical(run.cfg.model_copy(update={"seed": 0}))
            if group not in validated:  # component names and probes, solver, trainer settings
                validate(run.cfg)
                validated.add(group)
        except MimError as exc:
            raise MimError(f"sweep run {run.describe()}: {exc}") from None
        run.key = run_key(run.cfg)
        if run.key in seen:
            raise MimError(f"sweep runs {seen[run.key].describe()} and {run.describe()} are the same run")
        seen[run.key] = run
        sweep.runs.append(run)
    return sweep


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs that differ only in ``seed``, in the order of their first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(canonical(run.cfg.model_copy(update={"seed": 0})), []).append(run)
    return list(groups.values())


def batchable(cfg: Config) -> bool:
    """Whether several seeds of this config may be trained as one batched run with the same numbers
    as separate runs: not when the stage-2 solver is lbfgs (``solver=auto`` with a non-squared
    loss included)."""
    from mim_lightning.training.run import solver_for

    return solver_for(cfg, replicas=1) != "lbfgs"


# --------------------------------------------------------------------------- running


class Progress:
    """'sweep  [#####.....]  5/10 runs (3 cached)  eta 0:01:05' on stderr: a line updated in place on
    a terminal, one line per update elsewhere. The estimate uses only the runs trained so far."""

    def __init__(self, total: int, stream=None, width: int = 24):
        self.total, self.done, self.cached, self.trained = total, 0, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = None
        self.training_time = 0.0

    def line(self, remaining_to_train: int) -> str:
        filled = round(self.width * self.done / self.total) if self.total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        text = f"sweep  [{bar}]  {self.done}/{self.total} runs"
        if self.cached:
            text += f" ({self.cached} cached)"
        if remaining_to_train == 0:
            text += "  done"
        elif self.trained:
            text += f"  eta {_clock(self.training_time / self.trained * remaining_to_train)}"
        else:
            text += "  eta ?"
        return text

    def show(self, remaining_to_train: int) -> None:
        text = self.line(remaining_to_train)
        if self.tty:
            self.stream.write("\r" + text + ("\n" if remaining_to_train == 0 else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def skip(self, n: int, remaining_to_train: int) -> None:
        self.done += n
        self.cached += n
        if n:
            self.show(remaining_to_train)

    def finish(self, n: int, seconds: float, remaining_to_train: int) -> None:
        self.done += n
        self.trained += n
        self.training_time += seconds
        self.show(remaining_to_train)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def rank_zero() -> bool:
    """Whether this process writes files and output (under DDP every rank runs the sweep's loop;
    rank zero alone writes)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def write_run(folder: Path, cfg: Config, results: dict) -> None:
    """A run's config.yaml and results.json (written last, atomically: it marks the run as done)."""
    if not rank_zero():
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    tmp = folder / (RESULTS + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, folder / RESULTS)


def fresh_folder(folder: Path, cfg: Config) -> None:
    """Clear what an interrupted attempt left in a run folder (TensorBoard files, checkpoints)."""
    if not rank_zero():
        return
    for stale in ("tensorboard", "checkpoints"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))


@contextlib.contextmanager
def naming(group: list[Run]):
    """Prefix a run's one-line error with the run (a batched group: its seeds too)."""
    try:
        yield
    except MimError as exc:
        seeds = "" if len(group) == 1 else f" (seeds {', '.join(str(run.cfg.seed) for run in group)} batched)"
        raise MimError(f"sweep run {group[0].describe()}{seeds}: {exc}; finished runs are kept") from None


def execute(sweep: Sweep, out: Path, progress: Progress | None = None,
            checks: Callable[[Config], list] | None = None) -> dict[str, dict]:
    """Train every run of the sweep that has no results.json yet; {run key: results dict} for all.

    ``checks(cfg)`` gives a run's assumption report (default: ``report.preflight_checks``, which
    warns once per combination of components and refuses under ``checks.strict``)."""
    from mim_lightning.training import run as runner

    folder = lambda run: out / "runs" / run.key  # noqa: E731
    results: dict[str, dict] = {}
    todo: list[list[Run]] = []
    for group in seed_groups(sweep.runs):
        missing = []
        for run in group:
            path = folder(run) / RESULTS
            if path.is_file():
                try:
                    results[run.key] = json.loads(path.read_text())
                    continue
                except json.JSONDecodeError:
                    pass  # a damaged file: train the run again
            if (folder(run) / FAILED).is_file():
                results[run.key] = json.loads((folder(run) / FAILED).read_text())
                continue
            missing.append(run)
        if missing:
            todo.append(missing)
    to_train = sum(len(g) for g in todo)
    progress = progress or Progress(len(sweep.runs))
    progress.skip(len(sweep.runs) - to_train, to_train)

    reports: dict[tuple, list] = {}

    def assumptions(cfg: Config) -> list:
        which = (cfg.data.link, cfg.stage1.loss, cfg.model.activation, cfg.data.r, cfg.checks.strict)
        if which not in reports:
            if checks is not None:
                reports[which] = checks(cfg)
            else:
                from mim_lightning.analysis.report import preflight_checks

                reports[which] = preflight_checks(cfg, warn=rank_zero())
        return reports[which]

    for group in todo:  # refusals (checks.strict) before anything is trained
        for run in group:
            try:
                assumptions(run.cfg)
            except MimError as exc:
                raise MimError(f"sweep run {run.describe()}: {exc}") from None

    for group in todo:
        first = group[0]
        start = time.perf_counter()
        if len(group) > 1 and batchable(first.cfg):
            fresh_folder(folder(first), first.cfg)
            try:
                batch = runner.train_replicas(first.cfg, folder(first), [run.cfg.seed for run in group],
                                              assumptions=assumptions(first.cfg))
            except MimError:  # one seed failed: train them one by one to keep the others
                batch = None
            if batch is not None:
                for run, res in zip(group, batch):
                    write_run(folder(run), run.cfg, res)
                    results[run.key] = res
                to_train -= len(group)
                progress.finish(len(group), time.perf_counter() - start, to_train)
                continue
        for run in group:
            start = time.perf_counter()
            fresh_folder(folder(run), run.cfg)
            try:
                res = runner.train(run.cfg, folder(run), assumptions=assumptions(run.cfg))
                write_run(folder(run), run.cfg, res)
            except MimError as exc:  # diverged or vanished: recorded, the sweep goes on
                res = {"failed": f"sweep run {run.describe()}: {exc}"}
                (folder(run) / FAILED).write_text(json.dumps(res))
                if rank_zero():
                    click.echo(f"Warning: {res['failed']}", err=True)
            results[run.key] = res
            to_train -= 1
            progress.finish(1, time.perf_counter() - start, to_train)
    return results


# --------------------------------------------------------------------------- tables


def metrics_of(results: dict) -> dict[str, float | None]:
    """The scalar columns of results.csv from one run's results dict (None for a failed run)."""
    if "failed" in results:
        return dict.fromkeys(METRICS)
    cos = results["principal_cosines"]
    spec = results["spectral_principal_cosines"]
    return {
        "min_principal_cosine": min(cos),
        "mean_principal_cosine": sum(cos) / len(cos),
        "subspace_mass": results["subspace_mass"],
        "test_rel_mse": results["test_rel_mse"],
        "spectral_min_principal_cosine": min(spec),
        "spectral_mean_principal_cosine": sum(spec) / len(spec),
        # the subspace mass of the estimator's r orthonormal eigenvectors: the mean squared cosine
        "spectral_subspace_mass": sum(c * c for c in spec) / len(spec),
        "spectral_largest_min_principal_cosine": min(results["spectral_principal_cosines_largest"]),
        # weight along the eigenvector of M with the smallest |eigenvalue|: 0 is collapse
        "weakest_direction_mass": results["direction_mass"][-1],
        "stage2_loss": results["stage2_loss"],
    }


def rows_of(sweep: Sweep, results: dict[str, dict]) -> list[dict]:
    """One row per run: its swept values, the metrics, ``run`` (the key), and (not written to the
    csv) ``_d``, ``_r``, ``_link`` for the plots' reference lines."""
    rows = []
    for run in sweep.runs:
        row = dict(run.values)
        row.update(metrics_of(results[run.key]))
        row["status"] = results[run.key].get("failed", "ok")
        row["run"] = run.key
        row.update(_d=run.cfg.data.d, _r=run.cfg.data.r, _link=run.cfg.data.link)
        rows.append(row)
    return rows


def columns(sweep: Sweep) -> list[str]:
    return [*sweep.keys, *METRICS, "status", "run"]


def write_csv(sweep: Sweep, rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns(sweep), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def grouped(rows: list[dict], keys: list[str]) -> list[tuple[tuple, list[dict]]]:
    """Rows grouped by their values of ``keys`` (order of first appearance)."""
    groups: dict[str, tuple[tuple, list[dict]]] = {}
    for row in rows:
        values = tuple(row[k] for k in keys)
        groups.setdefault(json.dumps(values, default=str), (values, []))[1].append(row)
    return list(groups.values())


TABLE = [("min_principal_cosine", "min cos", "{:.3f}"), ("spectral_min_principal_cosine", "spectral", "{:.3f}"),
         ("subspace_mass", "mass", "{:.3f}"), ("test_rel_mse", "test MSE", "{:.4f}")]


def mean_cell(values: list, fmt: str) -> str:
    """The mean of the finished runs' values, '-' when none finished."""
    done = [v for v in values if v is not None]
    return fmt.format(sum(done) / len(done)) if done else "-"


def table(sweep: Sweep, rows: list[dict]) -> str:
    """Means over seeds, one line per combination of the other swept keys."""
    keys = [k for k in sweep.keys if k != "seed"]
    head = [*keys, "seeds", *(label for _, label, _ in TABLE)]
    body = []
    for values, group in grouped(rows, keys):
        cells = [v if isinstance(v, str) else json.dumps(v) for v in values] + [str(len(group))]
        cells += [mean_cell([r[m] for r in group], fmt) for m, _, fmt in TABLE]
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in [head, *body]]
    note = "means over seeds" if "seed" in sweep.keys else ""
    return "\n".join(lines) + (f"\n({note})" if note else "")


# --------------------------------------------------------------------------- the command


def thresholds(sweep: Sweep, rows: list[dict]) -> dict | None:
    """{(link, r): alpha_c} of the sweep's runs when the plots' x key is data.alpha, else None."""
    if sweep.x_key != "data.alpha":
        return None
    return {pair: alpha_c(*pair) for pair in sorted({(row["_link"], row["_r"]) for row in rows})}


def default_out(path: str | Path) -> Path:
    return Path("runs") / Path(path).stem


def run_sweep(path: str | Path, overrides=(), out: str | Path | None = None, echo=click.echo) -> dict:
    """``mim sweep``: validate, train what is missing, write results.csv, plots and a table.
    Returns {"sweep", "rows", "results", "plots", "trained"}."""
    from mim_lightning.experiments.plots import plot_sweep

    sweep = load_sweep(path, overrides)
    out = Path(out) if out is not None else default_out(path)
    zero = rank_zero()
    if not zero:
        echo = lambda *args, **kwargs: None  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    if zero:
        (out / "sweep.yaml").write_text(yaml.safe_dump({**sweep.base.model_dump(), "sweep": sweep_section(sweep)}, sort_keys=False))
    groups = seed_groups(sweep.runs)
    echo(f"{len(sweep.runs)} runs ({len(groups)} group(s) of seeds) in {out / 'runs'}", err=True)
    progress = Progress(len(sweep.runs), None if zero else io.StringIO())
    results = execute(sweep, out, progress)
    rows = rows_of(sweep, results)
    if not zero:
        return {"sweep": sweep, "rows": rows, "results": results, "plots": [], "trained": progress.trained}
    write_csv(sweep, rows, out / "results.csv")
    plots = plot_sweep(sweep, rows, out, thresholds(sweep, rows))
    echo(table(sweep, rows))
    written = ", ".join(p.name for p in plots) if plots else "no plots (only seed is swept)"
    echo(f"wrote {out / 'results.csv'}; plots: {written}")
    failed = sum(row["status"] != "ok" for row in rows)
    if failed == len(rows):
        raise MimError(f"all {failed} runs of the sweep failed; the first: {rows[0]['status']}")
    if failed:
        echo(f"Warning: {failed} of {len(rows)} runs failed (status column of results.csv; delete their"
             f" folders in {out / 'runs'} to retry them)", err=True)
    return {"sweep": sweep, "rows": rows, "results": results, "plots": plots, "trained": progress.trained}
