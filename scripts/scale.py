"""Scale check: one full run at large d with chunked full-batch passes; reports wall time per stage
and the process's peak resident memory (and the GPU's peak allocation on a GPU).

    python scripts/scale.py                                  # CPU: d = 4096, alpha = 8
    python scripts/scale.py --accelerator gpu --d 16384 --alpha 16 --width 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from mim_lightning.cli import quiet_lightning
from mim_lightning.config import load_config
from mim_lightning.training.run import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--alpha", type=float, default=8)
    parser.add_argument("--alpha2", type=float, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--json", default="scale.json")
    args = parser.parse_args()
    quiet_lightning()
    cfg = load_config(None, [f"data.d={args.d}", f"data.alpha={args.alpha}", f"data.alpha2={args.alpha2}",
                             f"model.width={args.width}", f"stage1.steps={args.steps}", "data.n_test=4096",
                             f"data.chunk_size={args.chunk_size}", f"trainer.accelerator={args.accelerator}",
                             "metrics.subspace=tracked"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = train(cfg, Path(tmp))
    row = {"d": args.d, "n1": cfg.n1, "n2": cfg.n2, "width": args.width, "steps": args.steps,
           "chunk_size": args.chunk_size, "accelerator": args.accelerator,
           "seconds": time.perf_counter() - start, "timings": results["timings"],
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "data_gib": 4 * (cfg.n1 + cfg.n2 + cfg.data.n_test) * args.d / 2**30,
           "min_principal_cosine": min(results["principal_cosines"])}
    if torch.cuda.is_available() and args.accelerator == "gpu":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(row, indent=2))
    Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
