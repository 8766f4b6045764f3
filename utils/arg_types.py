"""Value types and machine-dependent defaults of the command-line flags (used by utils/args.py).

Types raise ``argparse.ArgumentTypeError``, which argparse turns into a one-line usage error naming
the flag, at parse time, before any work.
"""
from __future__ import annotations

import argparse
import os


def _number(kind, text: str, ok, what: str):
    """Convert ``text`` with ``kind`` and check ``ok``; argparse turns the error into a usage line."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    return _number(int, text, lambda v: v > 0, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number > 0."""
    return _number(float, text, lambda v: 0 < v < float("inf"), "a number > 0")


def finite_float(text: str) -> float:
    """argparse ``type=``: any finite number (a flag whose range is checked with the flags it depends on)."""
    return _number(float, text, lambda v: abs(v) < float("inf"), "a finite number")


def int_range(low: int, high: int):
    """argparse ``type=``: an integer in ``[low, high]`` (the type's name says the range in messages)."""
    def convert(text: str) -> int:
        return _number(int, text, lambda v: low <= v <= high, f"an integer in {low}..{high}")
    convert.__name__ = f"integer {low}..{high}"
    return convert


def float_range(low: float, high: float, low_open: bool = False):
    """argparse ``type=``: a number in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN never passes."""
    def convert(text: str) -> float:
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        return _number(float, text, lambda v: (low < v if low_open else low <= v) and v <= high, what)
    convert.__name__ = f"number {low:g}..{high:g}"
    return convert


#: ``--seed``: numpy's RandomState (the k-means of stage 2) takes seeds below 2**32.
seed_int = int_range(0, 2 ** 32 - 1)
#: ``--img-h``/``--img-w``: the network needs a few pixels; beyond 2048 a batch no longer fits any memory.
image_side = int_range(8, 2048)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(cap: int = 8) -> int:
    """Default ``--workers``: one DataLoader worker process per available core, at most ``cap``."""
    return max(1, min(cap, available_cores()))


def pretrained_source(text: str) -> str:
    """``imagenet``, ``imagenet-offline``, ``none`` or the path of an existing file (its content is checked
    when loaded)."""
    if text in ("imagenet", "imagenet-offline", "none") or os.path.isfile(text):
        return text
    raise argparse.ArgumentTypeError(f"no file at {text!r}; give imagenet, imagenet-offline, none or the path of a "
                                     "torchvision state dict")
