"""Evaluate a checkpoint of either stage on the SYSU-MM01, RegDB or LLCM test protocol.

    python test.py --dataset sysu --data-dir D --resume-net1 logs/sysu/mmm/best.pth [--mode all|indoor] [--shot 1|10]
    python test.py --dataset regdb --data-dir D --trial 1 --resume-net1 logs/regdb_trial1/mmm/best.pth
    python test.py --dataset regdb --data-dir D --trial all --resume-net1 'logs/regdb_trial{trial}/mmm/best.pth'
    python test.py --dataset llcm --data-dir D --resume-net1 logs/llcm/mmm/best.pth [--rerank]

The plain results are always computed; --rerank adds k-reciprocal re-ranked results, printed with a
[re-ranked] label and stored under "results_rerank", never in place of the plain ones.
"""
import sys

from utils.args import parse, test_parser
from utils.cli import run_cli
from utils.settings import test_settings


def build_parser():
    """The test.py flags (:func:`utils.args.test_parser`, headed by this file's usage lines)."""
    return test_parser(description=__doc__)


def main(argv=None):
    """Evaluate one checkpoint (or one per RegDB trial) and write the results as JSON."""
    args = parse(build_parser(), argv)
    settings = test_settings(args)
    from utils.evaluation.run_test import run_test  # after parsing (torch, the model): a fast --help

    run_test(settings)


if __name__ == "__main__":
    sys.exit(run_cli(main))
