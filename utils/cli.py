"""Entry-point helpers: turn :class:`data.sample.DataError` into a one-line error, no traceback."""
from __future__ import annotations

import errno
import sys
from typing import Callable, Optional, Sequence

from data.sample import DataError

#: OS errors that come from the machine, not from the code: reported in one line like bad input.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


def error_message(err: Exception) -> str:
    """The one-line message of ``err``. A DataLoader worker re-raises it with the worker's traceback
    prepended ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep the
    original message, the text after the last ``DataError:``."""
    text = str(err)
    if text.startswith("Caught ") and "DataError: " in text:
        text = text.rsplit("DataError: ", 1)[1]
    return " ".join(text.split("\n")).strip()


def _user_errors() -> tuple:
    """Exceptions that report bad input, not bugs (evaluated only when an exception propagates, so
    the model package is imported lazily)."""
    from model import PretrainedWeightsError

    return DataError, PretrainedWeightsError


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a :class:`DataError` prints ``error: <message>`` to stderr and returns 2.

    Entry scripts end with ``sys.exit(run_cli(main))``. An OS error about space or permissions (disk
    full, read-only folder) is reported the same way, naming the file. Any other exception is a bug
    and keeps its traceback.
    """
    try:
        main(argv)
    except _user_errors() as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        todo = ("free disk space or choose another --output-dir" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                else "check the permissions or choose another --output-dir")
        print(f"error: {where}{err.strerror}; {todo}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def baseline_main(dataset: str, argv: Optional[Sequence[str]] = None) -> None:
    """Parse the stage-1 flags of ``dataset`` and run stage 1 (the body of baseline_<dataset>.py)."""
    from utils.args import baseline_parser, parse

    args = parse(baseline_parser(dataset), argv, dataset=dataset)
    from utils.train.stage1 import check_baseline_args, run_baseline  # after parsing: a fast --help

    check_baseline_args(args)
    run_baseline(args)
