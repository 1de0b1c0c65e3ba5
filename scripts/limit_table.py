"""How near the Bayes-optimal limit? The crossing tables of README.md's "Headline result" and
docs/experiments.md's experiment 6 from a sweep's results.csv (configs/paper/limit.yaml):

    python scripts/limit_table.py docs/figures/limit_results.csv [--config configs/paper/limit.yaml] [--json]

Per (link, r, loss, eta1) and d, at the levels 0.5 (weak recovery) and 0.9 (near-full recovery) of
the smallest principal cosine:

* network: the alpha after which the mean over seeds stays at or above the level
  (``analysis.crossing.stays_above``: the mean curves need not be monotone), with a 95% percentile
  bootstrap interval over seeds (2000 resamples of the seeds, each seed's whole curve kept);
* spectral: the same for the strongest fixed spectral estimator, the one of the six of results.csv
  (centred / uncentred x magnitude / largest / smallest) whose mean curve stays above the level
  first (chosen on all seeds, then bootstrapped);
* Bayes-optimal (d -> inf, at the runs' noise relative to std g: 0 for noiseless data): the root of
  min cosine(alpha) = level, solved on the state evolution (``analysis.limit.bayes_optimal``)
  inside the grid bracket to 1e-3 in alpha (``analysis.crossing.solve_level``), not interpolated;
* the ratios network / BO and spectral / BO with the bootstrap intervals divided by the BO alpha
  (which carries only the state evolution's own error, within a few per cent).

The config maps each row's run key to its link, r, loss, step size and noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict

from mim_lightning.analysis import crossing, limit
from mim_lightning.experiments.grid import load_sweep

LEVELS = (0.5, 0.9)
ESTIMATORS = tuple(f"{c}_{k}" for c in ("centred", "uncentred") for k in ("magnitude", "largest", "smallest"))
RESAMPLES = 2000


def seed_curves(rows, column) -> list[dict[float, float]]:
    """One curve {alpha: value} per seed from the runs that have a value in ``column``."""
    by_seed = defaultdict(dict)
    for row in rows:
        value = crossing.number(row.get(column))
        if value is not None:
            by_seed[row["seed"]][float(row["data.alpha"])] = value
    return [by_seed[s] for s in sorted(by_seed, key=float)]


def curve_crossing(curves, level) -> float:
    """The stays-above crossing of the mean of ``curves``."""
    return crossing.stays_above(*crossing.mean_curve(curves), level)


def with_interval(curves, level, seed=0) -> dict:
    """The crossing of the mean curve and its 95% bootstrap interval over the seeds."""
    draws = crossing.bootstrap(curves, lambda sample: curve_crossing(sample, level), RESAMPLES, seed)
    low, high = crossing.interval(draws)
    return dict(alpha=curve_crossing(curves, level), low=low, high=high)


def bayes_crossing(link, r, noise, alphas, level, grid_min) -> float:
    """The Bayes-optimal alpha where the smallest cosine reaches ``level``: bracketed on the grid,
    then solved on the state evolution to 1e-3 in alpha; inf when the grid never reaches it."""
    lo = max([a for a, c in zip(alphas, grid_min) if c < level], default=None)
    hi = min([a for a, c in zip(alphas, grid_min) if c >= level and (lo is None or a > lo)], default=None)
    if hi is None:
        return math.inf
    if lo is None:  # already above at the grid's first alpha: bracket below it
        lo = hi / 2
        while min_cosine(link, r, noise, lo) >= level:
            lo /= 2
    return crossing.solve_level(lambda a: min_cosine(link, r, noise, a), lo, hi, level)[0]


def min_cosine(link, r, noise, alpha) -> float:
    """The Bayes-optimal smallest principal cosine at one alpha (state evolution, cached)."""
    return limit.bayes_optimal(link, r, (alpha,), noise)["cosines"][0][-1]


def table(results_csv, config):
    """Per (link, r, loss, eta1, variant) and d: the crossings, intervals and ratios described above."""
    sweep = load_sweep(config)
    shape = {run.key: (run.cfg.data.link, run.cfg.data.r, run.cfg.data.noise, run.cfg.stage1.loss, run.cfg.stage1.lr)
             for run in sweep.runs}
    with open(results_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups = defaultdict(list)
    for row in rows:
        if row["run"] not in shape:
            raise SystemExit(f"run {row['run']} of {results_csv} is not a run of {config} (another sweep?)")
        groups[(shape[row["run"]], row.get("variant", ""), int(float(row["data.d"])))].append(row)
    out, bayes = [], {}
    for ((link, r, noise, loss, lr), variant, d), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        ok = [row for row in group if row["status"] == "ok"]
        alphas = sorted({float(row["data.alpha"]) for row in group})
        relative = noise / limit.link_std(link, r) if noise else 0.0
        bo_min = [cos[-1] for cos in limit.bayes_optimal(link, r, tuple(alphas), relative)["cosines"]]
        network = seed_curves(ok, "min_principal_cosine")
        spectral = {name: seed_curves(ok, f"spectral_{name}_min_principal_cosine") for name in ESTIMATORS}
        entry = dict(variant=variant, link=link, r=r, loss=loss, eta1=lr, d=d, seeds=len(network), runs=len(group),
                     failed=len(group) - len(ok), alphas=alphas, noise_relative=relative, bayes_min_cosine=bo_min,
                     network_mean=crossing.mean_curve(network)[1], levels={})
        for level in LEVELS:
            key = (link, r, relative, level, tuple(alphas))
            if key not in bayes:
                bayes[key] = bayes_crossing(link, r, relative, alphas, level, bo_min)
            a_bo = bayes[key]
            crossings = {name: curve_crossing(curves, level) for name, curves in spectral.items() if curves}
            best = min(crossings, key=lambda name: (crossings[name], ESTIMATORS.index(name))) if crossings else None
            net = with_interval(network, level)
            spec = with_interval(spectral[best], level) if best else dict(alpha=math.inf, low=math.inf, high=math.inf)
            ratio = (lambda c: {k: v / a_bo for k, v in c.items()})
            entry["levels"][str(level)] = dict(alpha_bayes=a_bo, network=net, spectral=spec, spectral_estimator=best,
                                               spectral_all=crossings, ratio_network=ratio(net),
                                               ratio_spectral=ratio(spec))
        out.append(entry)
    return out


def show(value, alphas, digits=3) -> str:
    """A crossing as printed: '> max' beyond the grid, '<= min' at or before its first alpha."""
    if math.isinf(value):
        return f"> {max(alphas):g}"
    return f"<= {value:g}" if value <= min(alphas) else f"{value:.{digits}g}"


def show_interval(c, alphas, scale=1.0) -> str:
    """'1.23 [1.10, 1.41]' (divided by ``scale`` for a ratio; '> x' where a bound leaves the grid)."""
    def one(v):
        return f"> {max(alphas) / scale:.2f}" if math.isinf(v) else f"{v / scale:.2f}"
    return f"{one(c['alpha'])} [{one(c['low'])}, {one(c['high'])}]"


def markdown(entries) -> str:
    """One table per level: BO alpha, network and spectral crossings and ratios with their intervals."""
    blocks = []
    for level in LEVELS:
        lines = [f"Smallest principal cosine {level}: alpha after which the mean over seeds stays >= {level}"
                 " [95% bootstrap interval over seeds]", "",
                 "| link, loss, eta1 | d | seeds | alpha_BO | network | network / BO | strongest spectral (which)"
                 " | spectral / BO |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for e in entries:
            a, x = e["alphas"], e["levels"][str(level)]
            failed = f" ({e['failed']} failed)" if e["failed"] else ""
            bo = x["alpha_bayes"]
            which = "none reaches it" if math.isinf(x["spectral"]["alpha"]) else x["spectral_estimator"].replace("_", ", ")
            lines.append(f"| {e['link']} (r = {e['r']}), `{e['loss']}`, {e['eta1']:g} | {e['d']} | {e['seeds']}{failed}"
                         f" | {show(bo, a)} | {show_interval(x['network'], a)} | {show_interval(x['network'], a, bo)}"
                         f" | {show_interval(x['spectral'], a)} ({which}) | {show_interval(x['spectral'], a, bo)} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the sweep's results.csv")
    parser.add_argument("--config", default="configs/paper/limit.yaml", help="the sweep file that made it")
    parser.add_argument("--json", action="store_true", help="all numbers as JSON instead of the markdown tables")
    args = parser.parse_args(argv)
    entries = table(args.results, args.config)
    print(json.dumps(entries, indent=1, default=str) if args.json else markdown(entries))


if __name__ == "__main__":
    main()
