#!/usr/bin/env bash
# Every GPU check and benchmark in one go, each part under its own time limit (under 8 minutes in
# all). Run from the repository root on a machine with a CUDA build of torch and Lightning; the
# device tool's machine lacks pydantic and google-crc32c, so carry them as wheels in .whl/ (see
# docs/performance.md, "GPU figures"). Writes JSON to ${OUT:-docs/gpu/<date>} and prints a summary.
#   tests     tests/test_gpu.py (4 tests of two runs each)
#   stage1    the stage-1 step against a hand-written loop at d = 1024 and 4096, fp32 and TF32
#             (goals: framework/hand <= 1.10 at d = 4096, <= 1.5 at d = 1024)
#   precision bf16-mixed and matmul_precision=medium against fp32 on the same data, d = 4096
#   ensemble  K = 8 seeds batched at d = 1024 against one seed (goal: at most 2x)
#   scale     d = 65536, alpha = 4, width 256, streamed, TF32, matrix-free baseline
#             (goals: <= 0.15 s per stage-1 step, baseline <= 10 s)
#   startup   where `mim train` spends its first seconds (python -X importtime)
set -u
cd "$(dirname "$0")/.."
out=${OUT:-docs/gpu/$(date -u +%Y-%m-%d)}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
  date -u; } | tee "$out/machine.txt"

part() {  # part NAME SECONDS COMMAND...: run under a time limit, keep the tail, report exit and time
  local name=$1 limit=$2 start=$SECONDS; shift 2
  echo "== $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$@" 2>&1 | grep -v -e Warning -e warn | tail -25
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

part tests 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py
for precision in highest high; do
  part "stage1 $precision" 50 python3 scripts/bench_stage1.py --device cuda --sizes 1024:16:1024 4096:16:1024 \
    --repeats 5 --steps 20 --set trainer.matmul_precision=$precision --json "$out/bench_stage1_$precision.json"
done
part precision 50 python3 scripts/precision_check.py --device cuda --d 4096 --json "$out/precision_d4096.json"
part ensemble 50 python3 scripts/bench_ensemble.py --accelerator gpu --sizes 1024 --replicas 8 --repeats 3 \
  --json "$out/bench_ensemble_gpu.json"
part scale 90 python3 scripts/scale.py --accelerator gpu --d 65536 --alpha 4 --alpha2 1 --width 256 --steps 10 \
  --uncentred --matmul-precision high --json "$out/scale_d65536_gpu.json"
part startup 30 sh -c "python3 -X importtime -c 'import mim_lightning.training.run' 2> '$out/importtime.txt'; \
  sort -t'|' -k2 -n -r '$out/importtime.txt' | head -15"
echo "== figures in $out"
