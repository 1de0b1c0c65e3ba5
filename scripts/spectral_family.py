"""The spectral family of a committed sweep, without retraining: regenerates every run's D1 from its
seed and recomputes the six spectral estimators a run reports now (centred / uncentred x
magnitude / largest / smallest, as ``training.results``), then writes the sweep's results.csv with
its spectral columns replaced by the current ones (the network's columns are copied unchanged).

    python scripts/spectral_family.py configs/paper/losses.yaml docs/figures/losses_results.csv \
        --out docs/figures/losses_results.csv

For sweeps whose results.csv predates the family (issue 24); a fresh ``mim sweep`` of the config
gives the same spectral columns (the D1 of a run depends only on its seed, d, n1 and link).
"""

from __future__ import annotations

import argparse
import csv

import torch

from mim_lightning.core.measures import principal_cosines
from mim_lightning.core.spectral import label_weighted_covariance, label_preprocessing, mean_preprocessing, top_eigenpairs
from mim_lightning.experiments.grid import load_sweep
from mim_lightning.plugins.validate import resolve_run_components
from mim_lightning.training.data import MultiIndexDataModule
from mim_lightning.training.results import ORDERS, strongest

PREPS = ("centred", "uncentred")


def family(cfg) -> dict[str, dict[str, list[float]]]:
    """{"centred" (when stage1.center) / "uncentred": {order: r principal cosines}} on the run's D1."""
    components = resolve_run_components(cfg)
    dm = MultiIndexDataModule([cfg.seed], cfg.data.d, cfg.data.r, components.link, cfg.data.link, cfg.data.noise,
                              {"d1": cfg.n1}, cfg.data.chunk_size, True, False)
    dm.place(torch.device("cpu"))
    n, loss, same = dm.n("d1"), components.stage1_loss, (lambda t: t)
    shifts = {"uncentred": torch.zeros(1)}
    if cfg.stage1.center:
        shifts["centred"] = mean_preprocessing(dm.chunks("d1"), loss, n, same)
    out = {}
    for prep in PREPS:
        if prep not in shifts:
            continue
        sigma = label_weighted_covariance(dm.chunks("d1"), lambda y: label_preprocessing(loss, y) - shifts[prep].unsqueeze(-1),
                                          n, same)
        values, vectors = torch.linalg.eigh(sigma.double())
        out[prep] = {order: principal_cosines(top_eigenpairs(values, vectors, cfg.data.r, order)[0].to(dm.U.dtype),
                                              dm.U)[0].tolist() for order in ORDERS}
    return out


def point(values: dict) -> tuple:
    """A run's swept values as a comparable key (numbers as floats, so '1' and 1.0 agree)."""
    def one(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)
    return tuple(sorted((k, one(v)) for k, v in values.items()))


def columns(fam) -> dict[str, object]:
    """The spectral columns of a results.csv row from a family."""
    name, best = strongest(fam)
    row = {"spectral_min_principal_cosine": min(best), "spectral_mean_principal_cosine": sum(best) / len(best),
           "spectral_subspace_mass": sum(c * c for c in best) / len(best), "spectral_estimator": name}
    for prep in PREPS:
        for order in ORDERS:
            cos = fam.get(prep, {}).get(order)
            row[f"spectral_{prep}_{order}_min_principal_cosine"] = min(cos) if cos else ""
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the sweep file")
    parser.add_argument("results", help="its results.csv")
    parser.add_argument("--out", required=True, help="where to write the updated results.csv")
    parser.add_argument("--plots", help="also draw the sweep's PNG plots from the new rows into this folder")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.config)
    runs = {point(run.values): run for run in sweep.runs}
    with open(args.results, newline="") as handle:
        rows = list(csv.DictReader(handle))
    keep = [k for k in rows[0] if not k.startswith("spectral_") and k not in ("status", "run")]
    out = []
    for i, row in enumerate(rows, 1):
        new = {k: row[k] for k in keep}
        run = runs[point({k: row[k] for k in sweep.keys})]  # by swept values: a key may predate the config schema
        new.update(columns(family(run.cfg)))
        new.update(status=row["status"], run=run.key)
        out.append(new)
        print(f"{i}/{len(rows)} {run.key}: {new['spectral_estimator']} {new['spectral_min_principal_cosine']:.3f}", flush=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    if args.plots:
        plot(args.config, out, args.plots)


def plot(config, rows, folder):
    """The sweep's PNG plots (``mim sweep``'s, the Bayes-optimal limit included) from the new rows."""
    from pathlib import Path

    from mim_lightning.experiments.plots import plot_sweep
    from mim_lightning.experiments.sweep import figures_of, shapes_of

    def value(text):
        try:
            return float(text) if text != "" else None
        except ValueError:
            return text

    sweep = load_sweep(config)
    rows = [{k: (v if k in ("run", "status", "variant", "spectral_estimator") else value(v)) for k, v in row.items()}
            for row in rows]
    Path(folder).mkdir(parents=True, exist_ok=True)
    for path in plot_sweep(rows, shapes_of(sweep), figures_of(sweep, None), Path(folder)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
