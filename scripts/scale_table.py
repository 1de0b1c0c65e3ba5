"""Time and memory per stage-1 step as d grows: one streamed run per d (``scripts/scale.py``, each
in its own process so that its peak resident memory is its own), baseline off, alpha = 4,
width 256, T1 = 5, sum_he2 with r = 2. Also measures the resident memory of a process that has
only imported the package, torch and Lightning (what every run holds before any data). Prints a
Markdown table and writes JSON.

    python scripts/scale_table.py                         # CPU: d = 1024 .. 16384
    python scripts/scale_table.py --accelerator gpu --d 4096 16384 65536
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

IMPORTS_ONLY = ("import lightning, torch, mim_lightning.training.run\n"
                "print(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--alpha", type=float, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--json", default="scale_table.json")
    args = parser.parse_args()
    floor = int(subprocess.run([sys.executable, "-c", IMPORTS_ONLY], capture_output=True, text=True, check=True).stdout)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.d:
            out = Path(tmp) / f"{d}.json"
            subprocess.run([sys.executable, str(Path(__file__).with_name("scale.py")), "--d", str(d),
                            "--alpha", str(args.alpha), "--alpha2", "1", "--steps", str(args.steps), "--baseline", "off",
                            "--accelerator", args.accelerator, "--json", str(out)], check=True, capture_output=True)
            row = json.loads(out.read_text())[0]
            row["imports_only_gib"] = floor / 2**30
            rows.append(row)
            print(f"d = {d}: {row['seconds_per_step']:.2f} s per step, peak {row['peak_rss_gib']:.2f} GiB", flush=True)
    print("\n| d | n = alpha d | seconds per stage-1 step | peak resident memory (GiB) | of which the run's own | D1 if stored (GiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['d']} | {r['n1']} | {r['seconds_per_step']:.2f} | {r['peak_rss_gib']:.2f} | "
              f"{r['peak_rss_gib'] - r['imports_only_gib']:.2f} | {r['stored_d1_gib']:.2f} |")
    Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
