"""Stage 1 on RegDB: intra-modality then joint cluster-contrast training; writes the
checkpoint and the pseudo-label artifact that main.py (stage 2) starts from.

    python baseline_regdb.py --data-dir D --trial 1 [--device cuda] [--resume]
"""
import sys

from utils.cli import stage1_main, run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: stage1_main("regdb", argv)))
