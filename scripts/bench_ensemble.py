"""Benchmark: K seeds trained as one batched run (runner.train_replicas) against K separate runs.

Both go through the whole two-stage run (Trainer set-up, data, stage 1, spectral baseline,
stage 2, test). Interleaved repeats, medians. Prints a table and writes JSON.

    python scripts/bench_ensemble.py                                 # CPU: K = 8 at d = 256
    python scripts/bench_ensemble.py --accelerator gpu --sizes 256 1024 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mim_lightning.cli import quiet_lightning
from mim_lightning.config import load_config
from mim_lightning.training.run import train, train_replicas


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256], help="values of d")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench_ensemble.json")
    args = parser.parse_args()
    quiet_lightning()

    rows = []
    for d in args.sizes:
        cfg = load_config(None, [f"data.d={d}", "data.alpha=16", "data.alpha2=16", f"model.width={d}",
                                 f"trainer.accelerator={args.accelerator}", "checkpoint.every_n_steps=1000000"])
        seeds = list(range(args.replicas))
        batched, separate, single = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            for _ in range(args.repeats):  # interleaved
                batched.append(seconds(lambda: train_replicas(cfg, out / "k", seeds)))
                runs = [seconds(lambda s=s: train(cfg.model_copy(update={"seed": s}), out / f"s{s}")) for s in seeds]
                separate.append(sum(runs))
                single.append(statistics.median(runs))
        row = {"d": d, "n": cfg.n1, "width": d, "replicas": args.replicas, "accelerator": args.accelerator,
               "one_run_s": statistics.median(single), "separate_runs_s": statistics.median(separate),
               "batched_s": statistics.median(batched)}
        row["batched_over_one_run"] = row["batched_s"] / row["one_run_s"]
        row["speedup_over_separate"] = row["separate_runs_s"] / row["batched_s"]
        rows.append(row)
    print(f"{'d':>6} {'K':>3} {'one run s':>10} {'K runs s':>9} {'batched s':>10} {'batched/one':>12} {'speed-up':>9}")
    for r in rows:
        print(f"{r['d']:>6} {r['replicas']:>3} {r['one_run_s']:>10.2f} {r['separate_runs_s']:>9.2f} {r['batched_s']:>10.2f}"
              f" {r['batched_over_one_run']:>12.2f} {r['speedup_over_separate']:>9.2f}")
    Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
