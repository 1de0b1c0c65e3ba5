"""The spectral estimator of sum_he2 (r = 2) with the preprocessing T(y) = y / (y + 2 s) for several
s, centred (T - mean_D1(T), as stage 1 with stage1.center=true) and uncentred (T), on the data of
the sweeps (the same seeds, so s = sqrt 2 and s = 2 reproduce the baselines of
configs/paper/centring.yaml and configs/paper/preprocessing_s.yaml). s = 1 is Luo, Alghamdi and
Lu's preprocessing (optimal at every alpha for phase retrieval); no loss can carry it (T is unbounded
below as y -> -2). Prints the smallest principal cosine of the top-2 eigenvectors (largest
eigenvalues), mean over seeds, and writes JSON.

    python scripts/spectral_s.py                          # d = 1024, alpha 1.5..6, 3 seeds (~2 min)
    python scripts/spectral_s.py --d 512 --alphas 2 4
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from mim_lightning.core.measures import principal_cosines
from mim_lightning.core.preprocessed_losses import sum_he2_preprocessing
from mim_lightning.core.spectral import spectral_estimate
from mim_lightning.core.streams import make_split, random_subspace
from mim_lightning.plugins.builtins.links import sum_he2

S_VALUES = {"1": 1.0, "sqrt2": math.sqrt(2.0), "2": 2.0, "3": 3.0}


def cosines(d: int, alpha: float, seed: int, r: int = 2) -> dict[str, float]:
    """{"<s> centred" / "<s> uncentred": smallest principal cosine} on the sweep's D1 of this seed."""
    cpu = torch.device("cpu")
    U = random_subspace(seed, d, r, cpu).unsqueeze(0)
    n = round(alpha * d)
    x, y = make_split([seed], "d1", n, U, sum_he2, "sum_he2", 0.0, 0, 1, cpu)
    out = {}
    for name, s in S_VALUES.items():
        T = sum_he2_preprocessing(r, s)(y)
        for label, shift in (("uncentred", 0.0), ("centred", T.mean(-1, keepdim=True))):
            w = T - shift
            sigma = torch.bmm(x.transpose(1, 2) * w.unsqueeze(1), x) / n
            vectors, _ = spectral_estimate(sigma, r, "largest")
            out[f"s={name} {label}"] = float(principal_cosines(vectors, U).min())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.5, 2, 3, 4, 6])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("docs/spectral_s.json"))
    args = parser.parse_args()
    rows = []
    for alpha in args.alphas:
        per_seed = [cosines(args.d, alpha, seed) for seed in args.seeds]
        means = {k: sum(p[k] for p in per_seed) / len(per_seed) for k in per_seed[0]}
        rows.append({"alpha": alpha, "mean": means, "per_seed": per_seed})
        if len(rows) == 1:
            print("alpha  " + "  ".join(f"{k:>15}" for k in means))
        print(f"{alpha:5g}  " + "  ".join(f"{v:15.3f}" for v in means.values()), flush=True)
    args.out.write_text(json.dumps({"d": args.d, "seeds": args.seeds, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out} (smallest principal cosine, mean over seeds {args.seeds}, d = {args.d})")


if __name__ == "__main__":
    main()
