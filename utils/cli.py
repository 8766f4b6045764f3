"""Entry-point helpers: turn :class:`data.sample.DataError` into a one-line error, no traceback."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from data.sample import DataError


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a :class:`DataError` prints ``error: <message>`` to stderr and returns 2.

    Entry scripts end with ``sys.exit(run_cli(main))``. Any other exception is a bug and keeps its
    traceback.
    """
    try:
        main(argv)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def baseline_main(dataset: str, argv: Optional[Sequence[str]] = None) -> None:
    """Parse the stage-1 flags of ``dataset`` and run stage 1 (the body of baseline_<dataset>.py)."""
    from utils.args import baseline_parser, parse

    args = parse(baseline_parser(dataset), argv, dataset=dataset)
    from utils.baseline import check_baseline_args, run_baseline  # after parsing: a fast --help

    check_baseline_args(args)
    run_baseline(args)
