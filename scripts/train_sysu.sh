#!/usr/bin/env bash
# SYSU-MM01, the released settings: stage 1, stage 2, then the test protocol in both search modes.
# Usage: bash scripts/train_sysu.sh /path/to/SYSU-MM01 [extra flags for all stages, e.g. --device cuda]
set -euo pipefail
DATA="${1:?usage: train_sysu.sh DATA_DIR [flags]}"; shift
source "$(dirname "$0")/train_setup.sh"  # to the repository root; OUT = the --output-dir of the flags
python baseline_sysu.py --data-dir "$DATA" "$@"
python main.py --dataset sysu --data-dir "$DATA" --resume_net1 "$OUT"/sysu/baseline/final.pth "$@"
for MODE in all indoor; do
    python test.py --dataset sysu --data-dir "$DATA" --resume-net1 "$OUT"/sysu/mmm/best.pth --mode "$MODE"
done
