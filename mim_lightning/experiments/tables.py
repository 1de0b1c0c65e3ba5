"""A sweep's numbers: the metrics of one run, the rows of results.csv, the printed table of means.

Takes the grid (``grid.Sweep``) only as an argument; imports nothing of the sweep's other modules,
so that the plots can share ``grouped``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mim_lightning.analysis.theory import population_moments
from mim_lightning.training.run_folder import write_atomic

if TYPE_CHECKING:
    from mim_lightning.experiments.grid import Sweep

#: the results.csv columns after the varied keys (``status`` and ``run`` are last)
CSV_METRICS = [
    "min_principal_cosine",
    "mean_principal_cosine",
    "subspace_mass",
    "test_rel_mse",
    "spectral_min_principal_cosine",
    "spectral_mean_principal_cosine",
    "spectral_subspace_mass",
    "spectral_estimator",
    *(f"spectral_{prep}_{order}_min_principal_cosine" for prep in ("centred", "uncentred")
      for order in ("magnitude", "largest", "smallest")),
    "weakest_eigenspace_mass_per_dim",
    "stage1_unbounded_fraction",
    "stage2_loss",
]

TIE = 1e-2  # eigenvalues of M closer than this fraction of max |eigenvalue| count as equal


def weakest_eigenspace(eigenvalues, error: float = 0.0) -> list[int] | None:
    """Positions (in the given order) of the eigenvectors of M whose |eigenvalue| is the smallest,
    ties included: |eigenvalues| within ``TIE * max |eigenvalue|`` (or the estimate's ``error``) of
    each other are grouped, walking up from the smallest. None when every eigenvalue is in that
    group (e.g. M = -2 I): then no direction is weaker than the others."""
    size = np.abs(np.asarray(eigenvalues, dtype=float))
    tolerance = max(TIE * float(size.max(initial=0.0)), error)
    order = np.argsort(size, kind="stable")
    group = [int(order[0])]
    for i, j in zip(order[:-1], order[1:], strict=True):
        if size[j] - size[i] > tolerance:
            break
        group.append(int(j))
    return None if len(group) == len(size) else sorted(group)


@functools.lru_cache(maxsize=None)
def weakest_eigenspace_of(link: str, loss: str, r: int) -> tuple[int, ...] | None:
    """``weakest_eigenspace`` of the population matrix M of a link and stage-1 loss, its eigenvalues
    ordered as the results' ``direction_mass`` (by |eigenvalue| descending, as training orders them)."""
    moments = population_moments(link, loss, r)
    values = np.linalg.eigvalsh(moments["M"])
    values = values[np.argsort(-np.abs(values), kind="stable")]
    group = weakest_eigenspace(values, moments["error"])
    return None if group is None else tuple(group)


def metrics_of(results: dict, weakest: tuple[int, ...] | None = None) -> dict[str, float | None]:
    """The scalar columns of results.csv from one run's results dict: None where the run has no such
    number (a failed run keeps the numbers it has, e.g. a spectral baseline computed before it
    diverged). ``weakest``: positions in ``direction_mass`` of M's weakest eigenspace (None: M has a
    single one, the column stays empty)."""
    cos = results.get("principal_cosines")
    spec = results.get("spectral_principal_cosines")
    family = results.get("spectral_estimators") or {}
    mass = results.get("direction_mass")
    return {
        "min_principal_cosine": min(cos) if cos else None,
        "mean_principal_cosine": sum(cos) / len(cos) if cos else None,
        "subspace_mass": results.get("subspace_mass"),
        "test_rel_mse": results.get("test_rel_mse"),
        "spectral_min_principal_cosine": min(spec) if spec else None,
        "spectral_mean_principal_cosine": sum(spec) / len(spec) if spec else None,
        # the subspace mass of the estimator's r orthonormal eigenvectors: the mean squared cosine
        "spectral_subspace_mass": sum(c * c for c in spec) / len(spec) if spec else None,
        # which member of the spectral family is the strongest (spectral_*: its numbers), and each member
        "spectral_estimator": results.get("spectral_estimator"),
        **{f"spectral_{prep}_{order}_min_principal_cosine": min(cosines)
           for prep, by_order in family.items() for order, cosines in by_order.items()},
        # weight per dimension in the eigenspace of M with the smallest |eigenvalue|: 0 is collapse
        "weakest_eigenspace_mass_per_dim": (sum(mass[i] for i in weakest) / len(weakest)
                                            if mass and weakest else None),
        # fraction of D1 on which stage 1's (centred) objective is unbounded below in the prediction
        "stage1_unbounded_fraction": results.get("stage1_unbounded_fraction"),
        "stage2_loss": results.get("stage2_loss"),
    }


def rows_of(sweep: Sweep, results: dict[str, dict]) -> list[dict]:
    """One row per run: its swept values, the metrics, ``status`` ('ok' or the error) and ``run``
    (the key), in grid order."""
    rows = []
    for run in sweep.runs:
        cfg, res = run.cfg, results[run.key]
        weakest = weakest_eigenspace_of(cfg.data.link, cfg.stage1.loss, cfg.data.r) if "direction_mass" in res else None
        row = dict(run.values)
        row.update(metrics_of(res, weakest))
        row["status"] = res.get("failed", "ok")
        row["run"] = run.key
        rows.append(row)
    return rows


def columns(sweep: Sweep) -> list[str]:
    return [*sweep.keys, *CSV_METRICS, "status", "run"]


def write_csv(sweep: Sweep, rows: list[dict], path: Path) -> None:
    """results.csv, written atomically (a reader, or a second sweep writing the same file, never
    sees half of it)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns(sweep), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(Path(path), text.getvalue())


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
    """The mean of the values that exist, '-' when none does."""
    done = [v for v in values if v is not None]
    return fmt.format(sum(done) / len(done)) if done else "-"


def table(sweep: Sweep, rows: list[dict]) -> str:
    """Means over seeds, one line per combination of the other swept keys (a 'failed' column when
    some runs failed: the means are over the others); 'spectral' is the strongest spectral estimator
    of each run."""
    keys = [k for k in sweep.keys if k != "seed"]
    failures = any(row["status"] != "ok" for row in rows)
    shown = list(TABLE)
    head = [*keys, "seeds", *(["failed"] if failures else []), *(label for _, label, _ in shown)]
    body = []
    for values, group in grouped(rows, keys):
        cells = [v if isinstance(v, str) else json.dumps(v) for v in values] + [str(len(group))]
        if failures:
            cells.append(str(sum(row["status"] != "ok" for row in group)))
        cells += [mean_cell([r.get(m) for r in group], fmt) for m, _, fmt in shown]
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True)) for line in [head, *body]]
    notes = ["means over seeds"] if "seed" in sweep.keys else []
    notes.append("spectral: each run's strongest spectral estimator, results.csv names it")
    return "\n".join(lines) + f"\n({'; '.join(notes)})"
