"""Stage-1 trajectories of a sweep: the smallest principal cosine at every recorded step of each run
(results.json ``history``), written as CSV and summarised per curve (the step-size table of
docs/experiments.md):

    python scripts/trajectories.py configs/paper/step_size.yaml runs/step_size \
        [--steps 2 10 20 24 30 40 60] [--csv docs/figures/step_size_trajectories.csv]

The summary has one row per value of the swept keys other than seed and stage1.steps, from the runs
with the largest stage1.steps: the mean over seeds of the smallest cosine at each of --steps, and
the mean of each seed's deepest fall (its running maximum minus its value, largest over the
trajectory: 0 for a trajectory that never goes down).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

from mim_lightning.experiments.grid import describe, load_sweep


def trajectories(config, folder):
    """[(swept values, {step: smallest cosine})] for every run of the sweep with a results.json."""
    out = []
    for run in load_sweep(config).runs:
        path = Path(folder) / "runs" / run.key / "results.json"
        if path.is_file():
            history = json.loads(path.read_text())["history"]
            out.append((run.values, {h["step"]: min(h["principal_cosines"]) for h in history}))
    return out


def deepest_fall(curve: dict[int, float]) -> float:
    """The largest drop of the curve below its running maximum."""
    best, fall = -1.0, 0.0
    for step in sorted(curve):
        best = max(best, curve[step])
        fall = max(fall, best - curve[step])
    return fall


def summary(runs, steps) -> str:
    """The markdown table described in the module docstring."""
    longest = max(values.get("stage1.steps", 0) for values, _ in runs)
    groups = defaultdict(list)
    for values, curve in runs:
        if values.get("stage1.steps", longest) == longest:
            groups[describe({k: v for k, v in values.items() if k not in ("seed", "stage1.steps")})].append(curve)
    lines = ["| curve | seeds | " + " | ".join(f"step {s}" for s in steps) + " | deepest fall |",
             "|" + " --- |" * (len(steps) + 3)]
    for name, curves in groups.items():
        cells = []
        for s in steps:
            values = [c[s] for c in curves if s in c]
            cells.append(f"{sum(values) / len(values):.3f}" if values else "-")
        fall = sum(map(deepest_fall, curves)) / len(curves)
        lines.append(f"| {name} | {len(curves)} | " + " | ".join(cells) + f" | {fall:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the sweep file")
    parser.add_argument("folder", help="its output folder (holds runs/<key>/results.json)")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 10, 20, 24, 30, 40, 60])
    parser.add_argument("--csv", help="write every run's trajectory here (one row per run and step)")
    args = parser.parse_args(argv)
    runs = trajectories(args.config, args.folder)
    if args.csv:
        keys = sorted({k for values, _ in runs for k in values})
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*keys, "step", "min_principal_cosine"])
            for values, curve in runs:
                for step in sorted(curve):
                    writer.writerow([*(values.get(k, "") for k in keys), step, f"{curve[step]:.6f}"])
    print(summary(runs, args.steps))


if __name__ == "__main__":
    main()
