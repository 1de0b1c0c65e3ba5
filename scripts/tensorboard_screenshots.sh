#!/usr/bin/env bash
# Screenshots of TensorBoard on two sweeps under one log folder, for docs/tensorboard.md:
#   docs/figures/tensorboard_timeseries.png      TIME SERIES as it opens (no tag filter), runs data.alpha in {1, 4, 32}, seed 0
#   docs/figures/tensorboard_custom_scalars.png  CUSTOM SCALARS, the same runs
#   docs/figures/tensorboard_single_run.png      CUSTOM SCALARS, one run (data.alpha=4, seed 0)
#   docs/figures/tensorboard_hparams.png         HPARAMS table, all runs of both sweeps
#   docs/figures/tensorboard_images.png          IMAGES, the sweep's figures
#
# Usage: scripts/tensorboard_screenshots.sh [LOGDIR]   (default /tmp/mim_tensorboard_shots)
# LOGDIR/sweep_alpha is trained with `mim sweep configs/sweep_alpha.yaml` and LOGDIR/sweep_d64 with a
# two-run sweep at d = 64 (the second sweep under the same log folder) unless they have results.csv
# (a few minutes on 2 shared CPU cores). Needs the venv's mim and tensorboard on PATH and Debian's
# chromium (apt-get install -y chromium). Headless chromium draws TIME SERIES' charts only
# sometimes (they render asynchronously; forceSVG helps): each page is shot up to 4 times and the
# largest PNG kept (a page whose charts are still empty compresses smaller).
set -euo pipefail
cd "$(dirname "$0")/.."
LOGDIR=${1:-/tmp/mim_tensorboard_shots}
FIGURES=docs/figures
mkdir -p "$FIGURES" "$LOGDIR"
[ -f "$LOGDIR/sweep_alpha/results.csv" ] || mim sweep configs/sweep_alpha.yaml --out "$LOGDIR/sweep_alpha"
if [ ! -f "$LOGDIR/sweep_d64/results.csv" ]; then
    SECOND=$(mktemp --suffix=.yaml)
    cat >"$SECOND" <<'EOF'
data: {d: 64, r: 2, link: sum_he2, alpha2: 32}
model: {width: 128}
stage1: {steps: 10}
sweep: {data.alpha: [2, 8], seed: [0]}
EOF
    mim sweep "$SECOND" --out "$LOGDIR/sweep_d64" --no-limit
    rm -f "$SECOND"
fi

PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp)
tensorboard --logdir "$LOGDIR" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
PROFILES=()
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    rm -rf "$LOG" "${PROFILES[@]}"
}
trap cleanup EXIT
python - "$PORT" <<'EOF'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/data/runs"
for _ in range(120):
    try:
        runs = json.load(urllib.request.urlopen(url, timeout=5))
        if sum("seed=" in run for run in runs) >= 23:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("tensorboard did not list the sweeps' runs within 60 s")
EOF

BASE="http://127.0.0.1:$PORT"
RUNS='sweep_alpha-.*alpha%3D(1%7C4%7C32)%2Cseed%3D0'   # the regular expression sweep_alpha-.*alpha=(1|4|32),seed=0
ONE='sweep_alpha-.*alpha%3D4%2Cseed%3D0'

shot() {  # shot NAME URL [WIDTH,HEIGHT]
    local best=0 size profile tmp
    for _ in 1 2 3 4; do
        profile=$(mktemp -d)
        PROFILES+=("$profile")
        tmp="$profile/shot.png"
        timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$profile" \
            --window-size="${3:-1600,1000}" --virtual-time-budget=20000 --screenshot="$tmp" "$2" >/dev/null 2>&1 || true
        size=$(stat -c %s "$tmp" 2>/dev/null || echo 0)
        if [ "$size" -gt "$best" ]; then
            best=$size
            cp "$tmp" "$FIGURES/$1.png"
        fi
    done
    echo "$FIGURES/$1.png ($best bytes)"
}

shot tensorboard_timeseries "$BASE/?forceSVG=true&smoothing=0&runFilter=$RUNS#timeseries" 1600,1000
shot tensorboard_custom_scalars "$BASE/#custom_scalars&_smoothingWeight=0&regexInput=$RUNS" 1600,1300
shot tensorboard_single_run "$BASE/#custom_scalars&_smoothingWeight=0&regexInput=$ONE" 1600,1300
shot tensorboard_hparams "$BASE/#hparams" 1600,1000
shot tensorboard_images "$BASE/#images" 1600,1000
