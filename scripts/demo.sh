#!/usr/bin/env bash
# The whole pipeline on generated SYSU-MM01-layout data, on the CPU, in a few minutes:
# synthetic data -> stage 1 (baseline_sysu.py) -> stage 2 (main.py) -> test.py.
#
# Usage: bash scripts/demo.sh [OUT_DIR]        (default OUT_DIR: demo_run; a previous demo there is replaced)
#        PYTHON=/path/to/python bash scripts/demo.sh
#
# What to watch: stage 1 clusters the training images at the start of every epoch, and with
# --report-ari it logs the adjusted Rand index of those pseudo-labels against the true identities
# (ari_rgb, ari_ir; 1 = perfect). The first clustering uses the untrained network; as the network
# trains on its own pseudo-labels the clusters get purer and the ARI rises, noisily from epoch to
# epoch on a problem this small (on the development machine: ari_rgb 0.83 -> 0.94 and ari_ir
# 0.58 -> 0.75 over stage 1; with OMP_NUM_THREADS=1, 0.83 -> ~0.9 and 0.58 -> ~0.7). The summary
# after stage 1 prints the trajectory and the change from the first to the last epoch.
# Everything is seeded: a rerun prints the same numbers on the same machine; another CPU may round
# differently and follow a somewhat different path.
#
# On this toy problem the randomly initialised network keeps the two modalities apart, so the joint
# clustering finds (almost) no cluster holding both; stage 1 then warns "too few cross-modality
# clusters" and its joint phase trains the intra-modality memories only. Stage 2's cluster matching
# is what links the modalities here.
#
# The settings are the real method's, scaled down to a toy problem so that a laptop CPU finishes it:
# resnet18 from random weights (no download) on 64x32 images, 30 identities instead of 395, epochs
# of 60 iterations instead of 200. Expect low retrieval numbers: the point is that every stage runs,
# not accuracy. About 7 minutes on an idle 2-core machine (5 of them stage 1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo_run}"
PY="${PYTHON:-python}"
# Shared by all three entry points: CPU, the small backbone and input size; --workers 0 because on a
# 2-core CPU the decoding of these small images is cheaper in-process than in worker processes that
# compete with the network for the same cores.
SMALL=(--device cpu --arch resnet18 --img-h 64 --img-w 32 --workers 0)
start=$SECONDS
step() { echo; echo "== $1  [$((SECONDS - start))s]"; }

step "1/4 synthetic SYSU-MM01-layout data in $OUT/data"
rm -rf -- "$OUT/logs"   # the runs of a previous demo (the data are regenerated in place with --force)
# 30 identities (22 for training, 8 for testing), 4-8 images per (identity, camera): about 390
# visible and 190 infrared training images, 128x64 pixels as written, resized to 64x32 by the loaders.
"$PY" scripts/make_synthetic.py --layout sysu --out "$OUT/data" --ids 30 --seed 0 --images-per-cam 4 8 --force
"$PY" scripts/inspect_dataset.py --dataset sysu --data-dir "$OUT/data"

step "2/4 stage 1: baseline_sysu.py (watch ari_rgb / ari_ir rise over the intra epochs)"
# --epochs 4: 4 intra-modality epochs, then 4 joint epochs (the method runs 50 + 50).
# --iters 60, -b 16, --num-instances 4: 60 steps per epoch of 4 pseudo-identities x 4 images per
#   modality (released: 200 steps of 8 x 16); ~12 visible / ~6 infrared images per identity here.
# --lr 3.5e-4: the released Adam rate (higher rates, e.g. 1e-3, collapse the infrared clusters
#   of an untrained network into a few giant ones, and training then stops for lack of clusters).
# --eps 0.5 --k1 15: DBSCAN radius and k-reciprocal neighbourhood scaled to ~9-18 images per
#   identity (released SYSU: 0.6 and 30 for ~56 visible / ~30 infrared images per identity; with
#   eps 0.6 the untrained network's infrared features fall into a few giant clusters);
#   --k1-joint 20 --k2-joint 10 likewise for the joint (modality-balanced) clustering.
# --eval-step 4: evaluate at the end of each phase only (the test split has just 8 identities).
"$PY" baseline_sysu.py --data-dir "$OUT/data" --output-dir "$OUT/logs" "${SMALL[@]}" --pretrained none \
    --epochs 4 --iters 60 --batch-size 16 --num-instances 4 --lr 3.5e-4 \
    --eps 0.5 --k1 15 --k1-joint 20 --k2-joint 10 --eval-step 4 --report-ari

echo
echo "-- pseudo-label quality per stage-1 epoch (from $OUT/logs/sysu/baseline/metrics.jsonl)"
"$PY" - "$OUT/logs/sysu/baseline/metrics.jsonl" <<'EOF'
import json, sys
print(f"{'phase':6} {'epoch':>5} {'rgb clusters':>12} {'ir clusters':>11} {'ari_rgb':>8} {'ari_ir':>7} {'ari_joint':>9}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    joint = f"{r['ari_joint']:9.3f}" if "ari_joint" in r else " " * 9
    print(f"{r['phase']:6} {r['epoch'] + 1:5d} {r['rgb_clusters']:12d} {r['ir_clusters']:11d} "
          f"{r['ari_rgb']:8.3f} {r['ari_ir']:7.3f} {joint}")
rows = [json.loads(line) for line in open(sys.argv[1])]
for key in ("ari_rgb", "ari_ir"):
    first, last = rows[0][key], rows[-1][key]
    print(f"{key}: {first:.3f} with the untrained network -> {last:.3f} after stage 1 ({last - first:+.3f})")
EOF

step "3/4 stage 2: main.py (multi-memory matching, then training with the alignment losses)"
# --epochs 4 --warm-epochs 1: one warm-up epoch with plain cross-entropy, then 3 epochs with the
#   GMM clean probabilities, triplet, prototype and MMD terms (released: 100 and 5).
# --lr 0.02: the released SGD rate is 0.1 with a 10-epoch linear warm-up; the short run starts lower.
# --matching hungarian: one-to-one matching (the paper). The released greedy matching lets many
#   visible clusters pick the same infrared cluster; on clusters this young it can leave fewer
#   matched identities than a batch needs (main.py then stops with a clear message).
"$PY" main.py --dataset sysu --data-dir "$OUT/data" --output-dir "$OUT/logs" "${SMALL[@]}" \
    --resume_net1 "$OUT/logs/sysu/baseline/final.pth" --epochs 4 --warm-epochs 1 --lr 0.02 \
    --matching hungarian --report-ari

step "4/4 test.py (10 gallery trials, all-search) on the best stage-2 checkpoint"
"$PY" test.py --dataset sysu --data-dir "$OUT/data" "${SMALL[@]}" \
    --resume-net1 "$OUT/logs/sysu/mmm/best.pth" --visualize 8

echo
echo "== done in $((SECONDS - start))s. Run directories: $OUT/logs/sysu/{baseline,mmm}; results and pictures:"
ls "$OUT"/logs/sysu/mmm/test_sysu_all*
