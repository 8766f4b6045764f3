"""Stage 1 on RegDB: intra-modality then joint cluster-contrast training; writes the
checkpoint and the pseudo-label artifact that main.py (stage 2) starts from.

    python baseline_regdb.py --data-dir D --trial 1 [--device cuda] [--resume]
"""
import sys

from utils.cli import run_cli


def main(argv=None):
    """Parse the flags and run stage 1."""
    from utils.args import baseline_parser, parse

    args = parse(baseline_parser("regdb"), argv, dataset="regdb")
    from utils.baseline import check_baseline_args, run_baseline  # after parsing: fast --help
    check_baseline_args(args)
    run_baseline(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
