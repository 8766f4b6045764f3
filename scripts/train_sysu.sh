#!/usr/bin/env bash
# SYSU-MM01, the released settings: stage 1, stage 2, then the test protocol in both search modes.
# Usage: bash scripts/train_sysu.sh /path/to/SYSU-MM01 [extra flags for all stages, e.g. --device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:?usage: train_sysu.sh DATA_DIR [flags]}"; shift
source scripts/output_dir.sh
OUT="$(output_dir "$@")"  # stage 2 and test.py read what stage 1 wrote there
python baseline_sysu.py --data-dir "$DATA" "$@"
python main.py --dataset sysu --data-dir "$DATA" --resume_net1 "$OUT"/sysu/baseline/final.pth "$@"
for MODE in all indoor; do
    python test.py --dataset sysu --data-dir "$DATA" --resume-net1 "$OUT"/sysu/mmm/best.pth --mode "$MODE"
done
