#!/usr/bin/env bash
# The whole method on generated SYSU-MM01-layout data, on the CPU: does it learn cross-modality identity?
#
#   1. synthetic SYSU-MM01-layout data: 120 identities, 30 of them in the test split (made once, reused)
#   2. a pretrained backbone: scripts/pretrain_backbone.py trains resnet18 on generated VISIBLE-ONLY people
#      of another population (a stand-in for the ImageNet weights MMM starts from; made once, reused)
#   3. scripts/bench_learning.py: stage 1 (baseline_sysu.py) -> stage 2 (main.py, released greedy
#      matching) -> test.py on both checkpoints, then the stage-1 vs stage-2 table and learning.png
#
# Usage: bash scripts/demo.sh [OUT_DIR]        (default OUT_DIR: demo_run; its logs are replaced each run)
#        PYTHON=/path/to/python THREADS=N KEEP_CHECKPOINTS=1 bash scripts/demo.sh
# It keeps two checkpoints (~90 MB: stage-1 final.pth, stage-2 best.pth); KEEP_CHECKPOINTS=1 keeps the
# resumable ones as well (~540 MB).
#
# About 9.5 minutes on an idle 2-core machine with the data and the backbone already made; the first run
# adds ~3.5 minutes of pretraining. A busy machine (one thread per process) took 19 minutes here.
# On a busy machine the scripts use one thread per process (THREADS=N overrides): oversubscribed
# OpenMP threads otherwise make single iterations take seconds instead of a fraction of one.
#
# How to read the result (printed at the end, explained line by line by bench_learning.py):
# - ARI (adjusted Rand index, 1 = the pseudo-labels equal the true identities, 0 = chance) per stage-1
#   epoch for visible (rgb), infrared (ir) and the joint clustering; "cross" = joint clusters holding
#   both modalities; "joint step" = whether the cross-modality (mixed-memory) step trained that epoch.
#   A skipped joint step ("too few cross-modality clusters" in the log) means the features of the two
#   modalities were still too far apart for the joint clustering to link any person across them.
# - MMLM accuracy: the share of visible clusters whose matched infrared cluster is the same person
#   (majority identity), for the released greedy rule and the paper's Hungarian rule. Greedy matching
#   is many-to-one, so visible clusters can merge into one infrared label: a lower visible ARI after
#   matching is then expected, not a bug.
# - Test Rank-1/mAP (all-search, 10 gallery trials, mean +- std) of the stage-1 and stage-2
#   checkpoints next to chance: stage 2 (MMM) should beat stage 1 (the baseline). On the development
#   machine: stage 1 Rank-1 ~37-44, mAP ~43-49; stage 2 Rank-1 ~49-55, mAP ~52-57; chance 3 / 8; the
#   joint step trained in every joint epoch. Another CPU or thread count rounds differently and follows
#   a somewhat different path (README "What to expect on CPU").
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

step "1/3 synthetic SYSU-MM01-layout data in $OUT/data"
# 120 identities: 90 for training (~1,600 visible / ~860 infrared images), 30 for testing; 128x64
# pixels as written, resized to 64x32 by the loaders. Reused when it is already there.
if [ ! -f "$OUT/data/synthetic_manifest.json" ]; then
    "$PY" scripts/make_synthetic.py --layout sysu --out "$OUT/data" --ids 120 --seed 0 --images-per-cam 4 8 --force
fi
"$PY" scripts/inspect_dataset.py --dataset sysu --data-dir "$OUT/data"

step "2/3 pretrained backbone $OUT/pretrained/resnet18_64x32.pth (visible-only synthetic people, an ImageNet stand-in)"
if [ ! -f "$OUT/pretrained/resnet18_64x32.pth" ]; then
    "$PY" scripts/pretrain_backbone.py --out "$OUT/pretrained/resnet18_64x32.pth" --arch resnet18 \
        --img-h 64 --img-w 32 --seed 0 "${THREAD_FLAG[@]}"
else
    echo "reusing it (delete the file to pretrain again)"
fi

step "3/3 stage 1 -> stage 2 -> test.py (scripts/bench_learning.py; its small-data settings are documented there)"
rm -rf -- "$OUT/bench"
"$PY" scripts/bench_learning.py --data-dir "$OUT/data" --pretrained "$OUT/pretrained/resnet18_64x32.pth" \
    --out "$OUT/bench" "${THREAD_FLAG[@]}"

# The resumable checkpoints (last.pth with optimizer state, the per-phase best.pth) are only needed to
# continue an interrupted run: keep the two that matter (stage-1 final.pth, stage-2 best.pth) unless
# KEEP_CHECKPOINTS=1.
if [ "${KEEP_CHECKPOINTS:-0}" != "1" ]; then
    find "$OUT/bench" -name '*.pth' ! -name final.pth ! -path '*/mmm/best.pth' -delete
fi
echo
echo "== done in $((SECONDS - start))s. Table and plot: $OUT/bench/learning.json, $OUT/bench/learning.png"
echo "   checkpoints kept ($(du -sh "$OUT/bench" | cut -f1) in $OUT/bench; KEEP_CHECKPOINTS=1 keeps all):"
find "$OUT/bench" -name '*.pth' | sort | sed 's/^/   /'
