"""Every check of a parsed command line that no single flag's type can make, in one place: flags that
contradict each other or the dataset, flags that must fit the number of torchrun processes, and flags
that need something from the environment (an importable package).

:func:`check_flags` runs in :func:`utils.args.parse`, right after argparse, so a bad combination is a
one-line usage error (exit status 2) before any data is read or any model is built. (Value ranges are
the flags' types, utils/arg_types.py; what only the data can tell is checked by data/.)
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, List, Optional

from data.specs import IR_TO_RGB, SPECS

RERANK_FLAGS = ("rerank_k1", "rerank_k2", "rerank_lambda")


def world_size() -> int:
    """Processes torchrun starts (WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


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


def _trial(args: argparse.Namespace) -> Optional[str]:
    """--trial: a number in the dataset's range (required for RegDB); "all" only for test.py."""
    from data.datasets import check_trial
    from data.sample import DataError

    trial = getattr(args, "trial", None)
    if trial == "all" and hasattr(args, "tvsearch"):
        return None
    try:
        check_trial(args.dataset, None if trial is None else int(trial))
    except ValueError:
        return f"--trial must be a number 1..10, got {trial!r}"
    except DataError as err:
        return str(err)
    return None


def _batch_size(args: argparse.Namespace) -> Optional[str]:
    """Stage 1: --batch-size is the global batch; each torchrun process takes whole pseudo-identities."""
    if not hasattr(args, "num_instances"):
        return None
    world = world_size()
    if args.batch_size % (args.num_instances * world) == 0:
        return None
    need = (f"--num-instances {args.num_instances}" if world == 1 else
            f"--num-instances x processes ({args.num_instances} x {world}) so that every process gets "
            "whole pseudo-identities")
    return f"--batch-size {args.batch_size} must be a multiple of {need}"


def _batch_ids(args: argparse.Namespace) -> Optional[str]:
    """Stage 2: the batch is split across the torchrun processes by whole identities."""
    world = world_size()
    if not hasattr(args, "batch_ids") or args.batch_ids % world == 0:
        return None
    return (f"--batch-ids {args.batch_ids} must be a multiple of the number of processes ({world}): "
            "the batch is split across them by whole identities")


def _test_flags(args: argparse.Namespace) -> Optional[str]:
    """test.py: --gallery-trials, --trial all and the --rerank-* flags fit the dataset and each other."""
    if not hasattr(args, "rerank"):
        return None
    spec = SPECS[args.dataset]
    given = [f for f in RERANK_FLAGS if getattr(args, f) is not None]
    if given and not args.rerank:
        return f"--{given[0].replace('_', '-')} needs --rerank"
    if args.rerank_lambda is not None and not 0.0 <= args.rerank_lambda <= 1.0:
        return f"--rerank-lambda must be between 0 and 1, got {args.rerank_lambda}"
    if args.gallery_trials is not None and spec.gallery_trials == 1:
        return f"--gallery-trials does not apply to {spec.display_name}: its galleries are not sampled"
    if args.trial == "all" and not spec.has_trials:
        return f"--trial all applies to datasets with training splits; {spec.display_name} has one"
    if args.trial == "all" and "{trial}" not in args.resume_net1:
        return ("--trial all needs a --resume-net1 pattern containing {trial}, "
                "e.g. 'logs/regdb_trial{trial}/mmm/best.pth'")
    return None


CHECKS: List[Callable[[argparse.Namespace], Optional[str]]] = [
    _trial, _tvsearch_direction, _faiss, _offline_weights, _batch_size, _batch_ids, _test_flags]


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Run every check; the first failure ends the program through ``parser.error`` (one line, exit 2)."""
    for check in CHECKS:
        problem = check(args)
        if problem:
            parser.error(problem)
