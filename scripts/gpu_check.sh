#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a session that has a GPU (about 10 minutes on an
# H200): prints everything and writes JSON under ${OUT:-gpu_results}. Run from the repository root
# with the package installed (and its CUDA build of torch).
#   1. the GPU tests (tests/test_gpu.py, and the scale tests on the GPU's torch);
#   2. the stage-1 step against a hand-written loop, fp32 and TF32, at d = 4096: the framework's
#      throughput as a fraction of the step's two matmuls alone (goals: fp32 >= 0.95, TF32 >= 0.70);
#   3. K = 8 seeds batched at d = 256 against one seed (goal: at most 2x);
#   4. d = 65536, alpha = 4 (n = 262144: 69 GB as float32 if stored), width 256, streamed, TF32,
#      T1 = 10, matrix-free baseline: seconds per step, peak GPU memory, principal cosines.
set -u
out=${OUT:-gpu_results}
mkdir -p "$out"
nvidia-smi || true
python -m pytest -q tests/test_gpu.py tests/test_scale.py 2>&1 | tail -5
for precision in highest high; do
  python scripts/bench_stage1.py --device cuda --sizes 1024:16:1024 4096:16:1024 --repeats 5 --steps 20 \
    --set trainer.matmul_precision=$precision --json "$out/bench_stage1_$precision.json" 2>&1 | grep -v Warning | tail -4
done
python scripts/bench_ensemble.py --accelerator gpu --sizes 256 1024 --replicas 8 --repeats 3 \
  --json "$out/bench_ensemble_gpu.json" 2>&1 | grep -v Warning | tail -4
python scripts/scale.py --accelerator gpu --d 65536 --alpha 4 --alpha2 1 --width 256 --steps 10 \
  --uncentred --matmul-precision high --json "$out/scale_d65536_gpu.json" 2>&1 | grep -v Warning | tail -40
