"""Lower precision in stage 1, measured: the same run (same data, same seed) in fp32 and in each
lower precision, its stage-1 seconds per step and how far its principal cosines move, the whole
history included. Stage 1 starts from tiny weights (model.init_scale = 1e-6), where bf16's 8-bit
mantissa may drown the signal; this shows whether it does. Writes JSON.

    python scripts/precision_check.py --device cuda --d 4096 --json docs/gpu/precision_d4096.json
    python scripts/precision_check.py --d 256        # CPU: matmul_precision only (bf16-mixed needs a GPU)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mim_lightning.cli import quiet_lightning
from mim_lightning.config import load_config
from mim_lightning.training.run import train

SETTINGS = {"fp32": [], "tf32": ["trainer.matmul_precision=high"], "medium": ["trainer.matmul_precision=medium"],
            "bf16-mixed": ["trainer.precision=bf16-mixed"]}


def run(args, extra: list[str]) -> dict:
    """One run's stage-1 seconds per step and its history of principal cosines."""
    cfg = load_config(None, [f"data.d={args.d}", f"data.alpha={args.alpha}", f"model.width={args.width}",
                             f"stage1.steps={args.steps}", "data.alpha2=1", "data.n_test=1024", "baseline.spectral=off",
                             f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", *extra])
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = train(cfg, Path(out))
        wall = time.perf_counter() - start
    return {"seconds_per_step": results["timings"]["stage1_steps"] / args.steps, "wall_seconds": wall,
            "principal_cosines": results["principal_cosines"],
            "history": [row["principal_cosines"] for row in results["history"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    quiet_lightning()
    names = list(SETTINGS) if args.device == "cuda" else ["fp32", "medium"]
    run(args, [])   # warm-up: the first run in a process pays one-off start-up costs
    runs = {name: run(args, SETTINGS[name]) for name in names}
    reference = runs["fp32"]
    for name, result in runs.items():
        result["max_cosine_change"] = max(abs(a - b) for row, ref in zip(result["history"], reference["history"])
                                          for a, b in zip(row, ref))
        result["final_cosine_change"] = max(abs(a - b) for a, b in zip(result["principal_cosines"],
                                                                       reference["principal_cosines"]))
        print(f"{name:>10}: {1e3 * result['seconds_per_step']:8.2f} ms/step, final cosines "
              f"{', '.join(f'{c:.4f}' for c in result['principal_cosines'])}, largest change from fp32 over the "
              f"history {result['max_cosine_change']:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
