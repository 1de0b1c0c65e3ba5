"""Time the Bayes-optimal limit (``core.state_evolution.bayes_optimal_overlap``, as ``mim theory
--alphas`` and the sweeps run it: default settings, error estimate included) before and after a
change, in one run:

    python scripts/bench_limit.py [--before REV] [--cases r2 r3] [--repeats 3] [--threads 2]

"before" is state_evolution.py as committed at REV (default 490adbc, before issue 20), loaded from
git; "after" is the working tree's. Each repeat times both, back to back (wall clock and the
process's CPU time), so the ratio of a pair is measured under the same load. Printed per case:
the range of each over the repeats, the range of the pairs' ratios, the largest change in Q
between the two and the largest error estimate (the stated accuracy), and the time to read the
result back from the disk cache (``analysis.limit``, a fresh process's memory).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mim_lightning.analysis import limit, limit_cache
from mim_lightning.core import state_evolution

ALPHAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
CASES = {  # name: (registered link, r, alphas, relative noise)
    "r1": ("he2", 1, ALPHAS, 0.01),
    "r2": ("sum_he2", 2, ALPHAS, 0.01),
    "r2-noiseless": ("sum_he2", 2, ALPHAS, 0.0),
    "r3": ("sum_he2", 3, ALPHAS, 0.01),
}


def module_at(rev: str):
    """state_evolution.py as committed at ``rev``, imported under another name."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["git", "show", f"{rev}:mim_lightning/core/state_evolution.py"], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "state_evolution_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("state_evolution_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def span(values, unit="s") -> str:
    return f"{min(values):.1f}-{max(values):.1f} {unit}" if unit else f"{min(values):.2f}-{max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="490adbc", help="git revision of the 'before' state_evolution.py")
    parser.add_argument("--cases", nargs="+", default=["r2", "r3"], choices=sorted(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the targets are for 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = module_at(args.before)
    print(f"torch {torch.__version__}, {args.threads} thread(s); before = {args.before}, after = working tree")
    for name in args.cases:
        link, r, alphas, noise = CASES[name]
        fn = limit.resolve("link", link)[1]
        runs = {"before": [], "after": []}
        for _ in range(args.repeats):
            for label, module in (("before", before), ("after", state_evolution)):
                runs[label].append(timed(lambda: module.bayes_optimal_overlap(fn, r, alphas, noise)))
        q_old, q_new = (np.array(runs[label][-1][2]["Q"]) for label in ("before", "after"))
        errors = runs["after"][-1][2]["error"]
        with tempfile.TemporaryDirectory() as folder:  # as the cache holds it; read as by a new process
            os.environ[limit_cache.CACHE_ENV] = folder
            limit_cache.write([Path(folder)], limit.cache_key(link, r, alphas, noise), {"link": link, **runs["after"][-1][2]})
            cached = []
            for _ in range(args.repeats):
                limit._memory.clear()
                cached.append(timed(lambda: limit.bayes_optimal(link, r, alphas, noise))[0])
        print(f"\n{name}: {link}, r = {r}, {len(alphas)} alphas {list(alphas)}, noise {noise:g}")
        for label in ("before", "after"):
            wall, cpu = [t[0] for t in runs[label]], [t[1] for t in runs[label]]
            its = runs[label][-1][2]["iterations"]
            print(f"  {label:6s} wall {span(wall)}, CPU {span(cpu)}; iterations {sum(its)} {its}")
        ratios = [b[0] / a[0] for b, a in zip(runs["before"], runs["after"])]
        cpu_ratios = [b[1] / a[1] for b, a in zip(runs["before"], runs["after"])]
        pairs = ", ".join(f"{b[0]:.1f}/{a[0]:.1f}" for b, a in zip(runs["before"], runs["after"]))
        print(f"  before / after: wall {span(ratios, None)}x, CPU {span(cpu_ratios, None)}x (pairs run back to back,"
              f" wall s: {pairs})")
        print(f"  max |Q_after - Q_before| = {np.abs(q_new - q_old).max():.2g} per alpha "
              f"{np.round(np.abs(q_new - q_old).max(axis=(1, 2)), 6).tolist()}; error estimates {np.round(errors, 6).tolist()}")
        print(f"  read back from the disk cache: {span([c * 1000 for c in cached], 'ms')}")


if __name__ == "__main__":
    sys.exit(main())
