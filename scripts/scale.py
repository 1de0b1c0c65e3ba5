"""Scale check: one whole run (`mim train`'s code path) at large d, with the data streamed from its
seeds and the matrix-free spectral baseline. Reports wall time per part, seconds per stage-1 step,
the process's peak resident memory (and the GPU's peak allocation on a GPU), what the stored data
would have taken, and the principal cosines of the network and of the baseline. Writes JSON.

    python scripts/scale.py                                       # CPU: d = 16384, alpha = 2
    python scripts/scale.py --accelerator gpu --d 65536 --alpha 4 --matmul-precision high
    python scripts/scale.py --d 2048 --alpha 4 --uncentred --compare-dense   # matrix-free against dense
    python scripts/scale_table.py                                  # time and memory per step as d grows
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mim_lightning.cli import quiet_lightning
from mim_lightning.config import load_config
from mim_lightning.training.run import train


def peak_resident_bytes() -> int:
    """This process image's peak resident memory (VmHWM; ru_maxrss would include the parent's if it
    was larger when it started this process)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def run(args, baseline: str) -> dict:
    cfg = load_config(None, [f"data.d={args.d}", f"data.alpha={args.alpha}", f"data.alpha2={args.alpha2}",
                             f"data.link={args.link}", f"data.r={args.r}", f"model.width={args.width}",
                             f"stage1.steps={args.steps}", f"data.n_test={args.n_test}", f"data.stream={args.stream}",
                             f"baseline.spectral={baseline}", f"baseline.uncentred={args.uncentred}",
                             f"trainer.accelerator={args.accelerator}",
                             f"trainer.matmul_precision={args.matmul_precision}", "checkpoint.every_n_steps=1000000"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = train(cfg, Path(tmp))
    row = {"d": args.d, "alpha": args.alpha, "n1": cfg.n1, "n2": cfg.n2, "width": args.width, "steps": args.steps,
           "link": args.link, "r": args.r, "stream": args.stream, "baseline": baseline,
           "accelerator": args.accelerator, "matmul_precision": args.matmul_precision,
           "seconds": time.perf_counter() - start, "timings": results["timings"],
           "seconds_per_step": results["timings"]["stage1_steps"] / args.steps,
           "peak_rss_gib": peak_resident_bytes() / 2**30,
           "stored_d1_gib": 4 * cfg.n1 * (args.d + 1) / 2**30,
           "principal_cosines": results["principal_cosines"],
           "spectral_principal_cosines": results["spectral_principal_cosines"],
           "spectral_estimators": results["spectral_estimators"]}
    if torch.cuda.is_available() and args.accelerator == "gpu":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--d", type=int, default=16384)
    parser.add_argument("--alpha", type=float, default=2)
    parser.add_argument("--alpha2", type=float, default=2)
    parser.add_argument("--link", default="sum_he2")
    parser.add_argument("--r", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=4096)
    parser.add_argument("--stream", default="true")
    parser.add_argument("--matmul-precision", default="highest")
    parser.add_argument("--baseline", default="matrix_free", choices=["matrix_free", "dense", "off"],
                        help="baseline.spectral of the run")
    parser.add_argument("--uncentred", action="store_true", help="also the uncentred baseline (as mim train does by default)")
    parser.add_argument("--compare-dense", action="store_true", help="also run the dense baseline on the same data")
    parser.add_argument("--json", default="scale.json")
    args = parser.parse_args()
    quiet_lightning()
    rows = [run(args, args.baseline)]
    if args.compare_dense:
        rows.append(run(args, "dense"))
        free, dense = rows[0], rows[1]
        rows[0]["max_cosine_difference_to_dense"] = max(
            abs(a - b) for prep, by_order in free["spectral_estimators"].items() for order, cosines in by_order.items()
            for a, b in zip(cosines, dense["spectral_estimators"][prep][order], strict=True))
    print(json.dumps(rows, indent=2))
    Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
