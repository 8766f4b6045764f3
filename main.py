"""Stage 2 of MMM: multi-memory learning and matching (MMLM) on the stage-1 artifact, then training
with the GMM-weighted identity loss, triplet, intra-modality prototype and inter-modality MMD terms.

    python main.py --dataset sysu --data-dir D --resume_net1 logs/sysu/baseline/final.pth
    python main.py --dataset regdb --data-dir D --trial 1 --resume_net1 logs/regdb_trial1/baseline/final.pth
"""
import sys

from utils.cli import run_cli, stage2_main


def main(argv=None):
    """Parse the flags and run stage 2."""
    stage2_main(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
