#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a session that has a GPU (prints everything, writes
# JSON under ${OUT:-gpu_results}). Run from the repository root with the package installed.
set -u
out=${OUT:-gpu_results}
mkdir -p "$out"
nvidia-smi || true
python -m pytest -q tests/test_gpu.py 2>&1 | tail -5
for precision in highest high; do
  python scripts/bench_stage1.py --device cuda --sizes 1024:16:1024 4096:16:1024 --repeats 5 --steps 20 \
    --set trainer.matmul_precision=$precision --json "$out/bench_stage1_$precision.json" 2>&1 | grep -v Warning | tail -4
done
python scripts/bench_ensemble.py --accelerator gpu --sizes 256 1024 4096 --replicas 8 --repeats 2 \
  --json "$out/bench_ensemble_gpu.json" 2>&1 | grep -v Warning | tail -5
python scripts/scale.py --accelerator gpu --d 16384 --alpha 16 --alpha2 4 --width 1024 --chunk-size 65536 \
  --json "$out/scale_gpu.json" 2>&1 | grep -v Warning | tail -20
