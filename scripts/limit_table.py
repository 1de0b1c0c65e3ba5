"""How near the Bayes-optimal limit? The ratio table of README.md's "6. How near the limit?" from a
sweep's results.csv (configs/paper/limit.yaml):

    python scripts/limit_table.py docs/figures/limit_results.csv [--config configs/paper/limit.yaml] [--json]

Per (link, r, variant) and d: alpha at which the mean-over-seeds smallest principal cosine reaches
0.5 (``analysis.limit.alpha_at_cosine``: linear interpolation between the sweep's alphas) for the
network, for the spectral baseline (the better, i.e. earlier, of centred and uncentred) and for
the Bayes-optimal limit (d -> inf; its smallest cosine at the same alphas, at the runs' noise
relative to std g: 0 for noiseless data), and the ratios alpha_network / alpha_BO and
alpha_spectral / alpha_BO. The config maps each row's run key to its link, r and noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict

from mim_lightning.analysis import limit
from mim_lightning.experiments.grid import load_sweep

LEVEL = 0.5


def number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mean_curve(rows, column):
    """(alphas, mean over the runs with a value) per alpha."""
    by_alpha = defaultdict(list)
    for row in rows:
        value = number(row.get(column))
        if value is not None:
            by_alpha[float(row["data.alpha"])].append(value)
    alphas = sorted(by_alpha)
    return alphas, [sum(by_alpha[a]) / len(by_alpha[a]) for a in alphas]


def table(results_csv, config):
    sweep = load_sweep(config)
    shape = {run.key: (run.cfg.data.link, run.cfg.data.r, run.cfg.data.noise) for run in sweep.runs}
    with open(results_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups = defaultdict(list)
    for row in rows:
        if row["run"] not in shape:
            raise SystemExit(f"run {row['run']} of {results_csv} is not a run of {config} (another sweep?)")
        groups[(shape[row["run"]], row.get("variant", ""), int(float(row["data.d"])))].append(row)
    out = []
    for ((link, r, noise), variant, d), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        ok = [row for row in group if row["status"] == "ok"]
        alphas = sorted({float(row["data.alpha"]) for row in group})
        relative = noise / limit.link_std(link, r) if noise else 0.0
        bo = limit.bayes_optimal(link, r, tuple(alphas), relative)
        bo_min = [cos[-1] for cos in bo["cosines"]]
        a_bo = limit.alpha_at_cosine(alphas, bo_min, LEVEL)
        net = limit.alpha_at_cosine(*mean_curve(ok, "min_principal_cosine"), LEVEL)
        spectral = {name: limit.alpha_at_cosine(*mean_curve(ok, f"spectral_{name}_magnitude_min_principal_cosine"), LEVEL)
                    for name in ("centred", "uncentred")}
        reached = {k: v for k, v in spectral.items() if v is not None}
        which = min(reached, key=reached.get) if reached else None
        ratio = (lambda a: a / a_bo if a is not None and a_bo else None)
        out.append(dict(variant=variant, link=link, r=r, d=d, seeds=len({row["seed"] for row in group}),
                        runs=len(group), failed=len(group) - len(ok), alphas=alphas, noise_relative=relative,
                        bayes_min_cosine=bo_min, alpha_bayes=a_bo, alpha_network=net,
                        alpha_spectral=reached.get(which) if which else None, spectral=which,
                        alpha_spectral_centred=spectral["centred"], alpha_spectral_uncentred=spectral["uncentred"],
                        ratio_network=ratio(net), ratio_spectral=ratio(reached.get(which) if which else None)))
    return out


def fmt(value, alphas, digits=3):
    return f"> {max(alphas):g}" if value is None else f"{value:.{digits}g}"


def markdown(entries) -> str:
    lines = ["| link (variant) | d | seeds | alpha_BO(cos 0.5) | alpha_network | network / BO | alpha_spectral"
             " (which) | spectral / BO |", "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        a = e["alphas"]
        ratio = lambda v, x: f"{v:.2f}" if v is not None else f"> {max(a) / e['alpha_bayes']:.2f}" if e["alpha_bayes"] and x is None else "-"  # noqa: E731
        failed = f" ({e['failed']} failed)" if e["failed"] else ""
        lines.append(f"| {e['link']}, r={e['r']} ({e['variant']}) | {e['d']} | {e['seeds']}{failed} |"
                     f" {fmt(e['alpha_bayes'], a)} | {fmt(e['alpha_network'], a)} |"
                     f" {ratio(e['ratio_network'], e['alpha_network'])} |"
                     f" {fmt(e['alpha_spectral'], a)} ({e['spectral'] or 'neither reaches 0.5'}) |"
                     f" {ratio(e['ratio_spectral'], e['alpha_spectral'])} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the sweep's results.csv")
    parser.add_argument("--config", default="configs/paper/limit.yaml", help="the sweep file that made it")
    parser.add_argument("--json", action="store_true", help="all numbers as JSON instead of the markdown table")
    args = parser.parse_args(argv)
    entries = table(args.results, args.config)
    print(json.dumps(entries, indent=1) if args.json else markdown(entries))


if __name__ == "__main__":
    main()
