#!/usr/bin/env bash
# RegDB, the released settings: one full training run per trial 1..10, then the average over trials.
# Usage: bash scripts/train_regdb.sh /path/to/RegDB [extra flags for all stages, e.g. --device cuda]
set -euo pipefail
DATA="${1:?usage: train_regdb.sh DATA_DIR [flags]}"; shift
source "$(dirname "$0")/train_setup.sh"  # to the repository root; OUT = the --output-dir of the flags
for T in 1 2 3 4 5 6 7 8 9 10; do
    python baseline_regdb.py --data-dir "$DATA" --trial "$T" "$@"
    python main.py --dataset regdb --data-dir "$DATA" --trial "$T" \
        --resume_net1 "$OUT/regdb_trial$T/baseline/final.pth" "$@"
done
python test.py --dataset regdb --data-dir "$DATA" --trial all --resume-net1 "$OUT/regdb_trial{trial}/mmm/best.pth"
