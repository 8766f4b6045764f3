"""Stage 1 on SYSU-MM01: intra-modality then joint cluster-contrast training; writes the
checkpoint and the pseudo-label artifact that main.py (stage 2) starts from.

    python baseline_sysu.py --data-dir D [--device cuda] [--resume]
"""
import sys

from utils.cli import stage1_main, run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: stage1_main("sysu", argv)))
