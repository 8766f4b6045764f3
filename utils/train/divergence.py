"""The error of a diverging run, one for both stages.

When a step's loss is not finite (utils/train/loop.py ``checked_step``) the run stops with one line
(:func:`divergence_error`) naming the epoch, the last checkpoint that exists and what to try.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

from data.sample import DataError


class DivergenceError(DataError):
    """The loss became NaN or inf: reported in one line with exit code 2 (utils/cli.py), not a traceback."""


def diverged_at(where: str, checkpoints: Sequence[str], low_precision: bool = False) -> Callable[[], DivergenceError]:
    """:func:`divergence_error` with these arguments, made only when a step needs it (the files are looked
    up then)."""
    return lambda: divergence_error(where, checkpoints, low_precision)


def divergence_error(where: str, checkpoints: Sequence[str], low_precision: bool = False) -> DivergenceError:
    """The one-line error of a non-finite loss.

    Args:
        where: the stage and the 1-based epoch, e.g. "stage 1, joint phase, epoch 3/40".
        checkpoints: the run's checkpoints that ``--resume`` continues from, most recent first; the
            first that exists is named (or the message says that none exists yet).
        low_precision: whether --amp autocasts (one more thing to switch off).
    """
    last = next((p for p in checkpoints if os.path.exists(p)), None)
    todo = "lower --lr (e.g. halve it)" + (" or use --amp off" if low_precision else "")
    if last is None:
        return DivergenceError(f"the loss became NaN or inf in {where}; no checkpoint exists yet: start "
                               f"again with {todo}")
    return DivergenceError(f"the loss became NaN or inf in {where}; the last checkpoint is {last}: "
                           f"continue from it with --resume and {todo}")
