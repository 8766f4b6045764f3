#!/usr/bin/env bash
# LLCM, the SYSU-MM01 settings with Jaccard k1 25: stage 1, stage 2, then the test protocol in both
# directions (visible->infrared and infrared->visible, 10 gallery trials each).
# Usage: bash scripts/train_llcm.sh /path/to/LLCM [extra flags for all stages, e.g. --device cuda]
set -euo pipefail
DATA="${1:?usage: train_llcm.sh DATA_DIR [flags]}"; shift
source "$(dirname "$0")/train_setup.sh"  # to the repository root; OUT = the --output-dir of the flags
python baseline_llcm.py --data-dir "$DATA" "$@"
python main.py --dataset llcm --data-dir "$DATA" --resume_net1 "$OUT"/llcm/baseline/final.pth "$@"
python test.py --dataset llcm --data-dir "$DATA" --resume-net1 "$OUT"/llcm/mmm/best.pth
