#!/usr/bin/env bash
# Screenshots of TensorBoard on a sweep folder, for docs/tensorboard.md:
#   docs/figures/tensorboard_custom_scalars.png  CUSTOM SCALARS, runs data.alpha in {1, 4, 32}, seed 0
#   docs/figures/tensorboard_timeseries.png      TIME SERIES, stage1/* tags, the same runs
#   docs/figures/tensorboard_hparams.png         HPARAMS table, all 21 runs
#
# Usage: scripts/tensorboard_screenshots.sh [SWEEP_DIR]   (default /tmp/mim_sweep_alpha)
# SWEEP_DIR is trained first with `mim sweep configs/sweep_alpha.yaml` unless it has results.csv
# (about 1 minute on 2 shared CPU cores). Needs the venv's mim and tensorboard on PATH and Debian's
# chromium (apt-get install -y chromium). Headless chromium draws TIME SERIES' charts only
# sometimes (they render asynchronously; forceSVG helps): each page is shot up to 4 times and the
# largest PNG kept (a page whose charts are still empty compresses smaller).
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP=${1:-/tmp/mim_sweep_alpha}
FIGURES=docs/figures
mkdir -p "$FIGURES"
[ -f "$SWEEP/results.csv" ] || mim sweep configs/sweep_alpha.yaml --out "$SWEEP"

PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp)
tensorboard --logdir "$SWEEP" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
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
        if any("seed=" in run for run in json.load(urllib.request.urlopen(url, timeout=5))):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("tensorboard did not list the sweep's runs within 60 s")
EOF

BASE="http://127.0.0.1:$PORT"
RUNS='alpha%3D(1%7C4%7C32)%2Cseed%3D0'   # the regular expression alpha=(1|4|32),seed=0

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

shot tensorboard_custom_scalars "$BASE/#custom_scalars&_smoothingWeight=0&regexInput=$RUNS" 1600,1100
shot tensorboard_timeseries "$BASE/?forceSVG=true&smoothing=0&tagFilter=stage1&runFilter=$RUNS#timeseries"
shot tensorboard_hparams "$BASE/#hparams"
