"""The entry points' bodies: parse the flags, make the typed settings, run the stage
(:func:`stage1_main`, :func:`stage2_main`; test.py does the same with utils/evaluation/run_test.py), and
:func:`run_cli`, which turns :class:`data.sample.DataError` into a one-line error, no traceback."""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
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


class InterruptHandler:
    """SIGINT (Ctrl-C) handler of the entry points: stop the run whatever it is doing.

    The first Ctrl-C raises ``KeyboardInterrupt`` as Python's own handler does, so the run stops with
    "interrupted" and exit status 130. Python drops an exception raised where it cannot propagate (in a
    ``__del__`` or a garbage-collector callback, which run at arbitrary moments), so the handler also arms
    a timer: a run still going ``grace_s`` seconds later ends at once, as does a second Ctrl-C.
    Checkpoints are written atomically, so ending at any moment loses at most the current epoch.
    """

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.timer: Optional[threading.Timer] = None

    def __call__(self, signum, frame):
        if self.timer is not None:  # a second Ctrl-C
            self.force()
        self.timer = threading.Timer(self.grace_s, self.force)
        self.timer.daemon = True
        self.timer.start()
        raise KeyboardInterrupt

    @staticmethod
    def force() -> None:
        print("interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None,
            grace_s: float = 10.0) -> int:
    """Run ``main(argv)``; a :class:`DataError` prints ``error: <message>`` to stderr and returns 2.

    Entry scripts end with ``sys.exit(run_cli(main))``. An OS error about space or permissions (disk
    full, read-only folder) is reported the same way, naming the file. Any other exception is a bug
    and keeps its traceback. Ctrl-C stops the run (exit status 130, :class:`InterruptHandler`; at most
    ``grace_s`` seconds late when Python drops the interrupt); the previous SIGINT handler is restored.
    """
    handler, previous = InterruptHandler(grace_s), None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, handler)
    try:
        return _run(main, argv)
    finally:
        handler.cancel()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]]) -> int:
    """The body of :func:`run_cli`: exceptions of bad input -> one line and 2, Ctrl-C -> 130."""
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


def stage1_main(dataset: str, argv: Optional[Sequence[str]] = None, observers=None) -> None:
    """Parse the stage-1 flags of ``dataset`` and run stage 1 (the body of baseline_<dataset>.py);
    ``observers`` (a :class:`utils.train.callbacks.Observers`) hear of its training events."""
    from utils.args import stage1_parser, parse

    args = parse(stage1_parser(dataset), argv, dataset=dataset)
    from utils.settings import stage1_settings  # after parsing: a fast --help
    from utils.train.stage1 import run_stage1

    run_stage1(stage1_settings(args), observers)


def stage2_main(argv: Optional[Sequence[str]] = None, observers=None) -> None:
    """Parse the stage-2 flags and run stage 2 (the body of main.py); ``observers`` as :func:`stage1_main`."""
    from utils.args import stage2_parser, parse

    args = parse(stage2_parser(), argv)
    from utils.settings import stage2_settings  # after parsing: a fast --help
    from utils.train.stage2 import run_stage2

    run_stage2(stage2_settings(args), observers)
