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
