"""Checks of a parsed command line that no single flag's type can make: flags that contradict each
other, and flags that need something from the environment (an importable package).

:func:`check_flags` runs in :func:`utils.args.parse`, right after argparse, so a bad combination is a
one-line usage error (exit status 2) before any data is read or any model is built.
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional

from data.specs import IR_TO_RGB, SPECS


def _tvsearch_direction(args: argparse.Namespace) -> Optional[str]:
    """--tvsearch means infrared -> visible only: a --direction naming the other way contradicts it."""
    if not getattr(args, "tvsearch", False) or getattr(args, "direction", "both") == "both":
        return None
    spec = SPECS.get(getattr(args, "dataset", None))
    reverse = {IR_TO_RGB, *(spec.directions[1:] if spec is not None and spec.directions else ())}
    if args.direction in reverse:
        return None
    return (f"--tvsearch (infrared -> visible only) contradicts --direction {args.direction}; "
            "drop one of them")


def _faiss(args: argparse.Namespace) -> Optional[str]:
    """--knn faiss needs an importable faiss: checked now, not after the first feature extraction."""
    if getattr(args, "knn", None) != "faiss":
        return None
    try:
        import faiss  # noqa: F401
    except ImportError as err:  # the real reason (missing package, missing shared library, ...)
        reason = " ".join(str(err).split())
        return (f"--knn faiss: faiss cannot be imported ({type(err).__name__}: {reason}); install faiss-cpu "
                "or faiss-gpu, or use --knn torch")
    return None


def _offline_weights(args: argparse.Namespace) -> Optional[str]:
    """--pretrained imagenet-offline exists for mobilenet_v2 only (the package ships no ResNet)."""
    if getattr(args, "pretrained", None) != "imagenet-offline" or getattr(args, "arch", None) in (None, "mobilenet_v2"):
        return None
    return (f"--pretrained imagenet-offline exists for --arch mobilenet_v2 only; for --arch {args.arch} give "
            "--pretrained imagenet or the path of a torchvision ResNet file")


CHECKS: List[Callable[[argparse.Namespace], Optional[str]]] = [_tvsearch_direction, _faiss, _offline_weights]


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Run every check; the first failure ends the program through ``parser.error`` (one line, exit 2)."""
    for check in CHECKS:
        problem = check(args)
        if problem:
            parser.error(problem)
