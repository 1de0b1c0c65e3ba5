"""What a stage-1 step dispatches, per step of a whole default run (flushes included): aten ops,
host reads (``aten._local_scalar_dense``) and eigensolver calls, from runs of T and 2 T steps
counted with ``training.dispatch.CountOps`` on the CPU (the same code a GPU runs). Writes JSON.

    python scripts/count_dispatch.py                      # d = m = 1024, alpha = 2, T = 10
    python scripts/count_dispatch.py --d 256 --width 256 --json docs/dispatch_d256.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mim_lightning.cli import quiet_lightning
from mim_lightning.config import load_config
from mim_lightning.training.dispatch import CountOps, per_step
from mim_lightning.training.run import train


def counted(args, steps: int):
    cfg = load_config(None, [f"data.d={args.d}", f"model.width={args.width}", f"data.alpha={args.alpha}",
                             f"stage1.steps={steps}", "data.alpha2=1", "data.n_test=256", "baseline.spectral=off",
                             *args.set])
    with tempfile.TemporaryDirectory() as out, CountOps() as mode:
        train(cfg, Path(out))
    return mode.ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides KEY=VALUE")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    quiet_lightning()
    counted(args, args.steps)   # warm-up: one-off costs of the first run in a process
    counts = per_step(counted(args, args.steps), counted(args, 2 * args.steps), args.steps)
    print(f"per stage-1 step: {counts['ops']:.1f} aten ops, {counts['host_reads']:.2f} host reads, "
          f"{counts['eigensolver_calls']:.2f} eigensolver calls")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **counts}, indent=2))


if __name__ == "__main__":
    main()
