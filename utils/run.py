"""Setting up a training run: run directory, logging, device, seed, image cache, resume guard."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from data.images import ImageCache, default_cache_dir
from data.sample import DataError
from utils.device import resolve_device, seed_everything
from utils.distributed import DistInfo, init_distributed, run_on_main
from utils.runlog import setup_logger, write_args


@dataclass
class RunContext:
    """What every stage needs besides its flags."""

    run_dir: str
    device: torch.device
    logger: object
    dist: DistInfo
    cache_dir: Optional[str]

    def cache(self, args, interpolation: str):
        """The pre-resized image cache for (img_h, img_w, interpolation), or None (decode JPEGs)."""
        if self.cache_dir is None:
            return None
        return ImageCache.open(self.cache_dir, args.data_dir, args.img_h, args.img_w, interpolation)


def run_dir_for(args, stage: str) -> str:
    """``<output-dir>/<dataset>[_trial<t>]/<stage>``."""
    name = args.dataset if args.trial is None else f"{args.dataset}_trial{args.trial}"
    return os.path.join(args.output_dir, name, stage)


def prepare_run(args, stage: str, last_checkpoint: str) -> RunContext:
    """Create (or reuse with --resume) the run directory and everything around it.

    Args:
        last_checkpoint: path relative to the run directory whose presence marks an existing run.

    Raises:
        DataError: the run directory already holds a run and --resume was not given.
    """
    from data.datasets import check_root

    check_root(args.dataset, args.data_dir)
    dist = init_distributed(args)
    device = dist.device if dist.enabled else resolve_device(args.device)
    run_dir = run_dir_for(args, stage)
    # Rank 0 looks and tells the others: every rank then takes the same branch, even when rank 0
    # has already created files or the other ranks do not see rank 0's file system.
    existing = run_on_main(lambda: os.path.exists(os.path.join(run_dir, last_checkpoint)), dist)
    if existing and not args.resume:
        raise DataError(f"{run_dir} already holds a {stage} run; pass --resume to continue it, "
                        "or choose another --output-dir")
    logger = setup_logger(run_dir, stage, enabled=dist.is_main)
    if dist.is_main:
        write_args(run_dir, vars(args))
    # Same seed on every rank: samplers generate identical global batches and slice them per rank.
    seed_everything(args.seed)
    cache_dir = args.cache_dir or default_cache_dir(args.data_dir)
    if not os.path.isdir(cache_dir):
        if args.cache_dir:
            raise DataError(f"--cache-dir {args.cache_dir} does not exist; run scripts/prepare_data.py first")
        cache_dir = None
    logger.info(f"{stage}: dataset {args.dataset}{'' if args.trial is None else ' trial %s' % args.trial}, "
                f"device {device}{' x %d processes (torchrun)' % dist.world_size if dist.enabled else ''}, "
                f"run dir {run_dir}, image cache {cache_dir or 'none (decoding images)'}"
                f"{', resuming' if existing else ''}")
    return RunContext(run_dir=run_dir, device=device, logger=logger, dist=dist, cache_dir=cache_dir)


class Timer:
    """Seconds since construction (for the per-epoch report)."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
