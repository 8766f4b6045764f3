"""Setting up a training run: run directory, logging, device, seed, image cache, resume guard."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from data.images import ImageCache, default_cache_dir
from data.sample import DataError
from utils.device import amp_dtype, resolve_device, seed_everything
from utils.distributed import DistInfo, init_distributed, run_on_main
from utils.checkpoint import check_compatible, load_checkpoint
from utils.run_identity import check_same_run, stage1_digests
from utils.runlock import acquire_lock
from utils.runlog import setup_logger, write_args
from utils.settings import DataSettings, RunSettings, Stage2Settings
from utils.train.callbacks import Observers

#: Flags holding a path, recorded absolute in ``args.json``.
PATH_FLAGS = ("data_dir", "output_dir", "resume_net1", "cache_dir", "baseline_artifact")


@dataclass
class RunContext:
    """What every step of a stage needs besides its settings.

    Attributes:
        run_dir: the run folder; ``device``: the training device; ``logger``: the run's logger (log.txt).
        dist: this process's place among the torchrun processes (utils/distributed.py).
        data: the data settings (for :meth:`cache`); ``cache_dir``: the pre-resized image cache or None.
        amp: the autocast dtype of --amp on ``device`` (None = float32), resolved once.
        flags: the parsed flags (the run's identity, saved in every checkpoint).
        observers: who hears of training events (utils/train/callbacks.py); empty unless a caller adds some.
    """

    run_dir: str
    device: torch.device
    logger: object
    dist: DistInfo
    data: DataSettings
    cache_dir: Optional[str]
    amp: Optional[torch.dtype]
    flags: Dict[str, Any]
    observers: Observers = field(default_factory=Observers)

    def cache(self, interpolation: str):
        """The pre-resized image cache for the run's (img_h, img_w) and ``interpolation``, or None (decode JPEGs)."""
        if self.cache_dir is None:
            return None
        return ImageCache.open(self.cache_dir, self.data.data_dir, self.data.img_h, self.data.img_w, interpolation)


def run_dir_for(run: RunSettings, data: DataSettings) -> str:
    """``<output-dir>/<dataset>[_trial<t>]/<stage>``."""
    name = data.dataset if data.trial is None else f"{data.dataset}_trial{data.trial}"
    return os.path.join(run.output_dir, name, run.folder)


def prepare_run(settings, last_checkpoint: str, observers: Optional[Observers] = None) -> RunContext:
    """Create (or reuse with --resume) the run directory and everything around it.

    Args:
        settings: a :class:`utils.settings.Stage1Settings` or ``Stage2Settings``.
        last_checkpoint: path relative to the run directory whose presence marks an existing run.
        observers: who hears of training events (none by default).

    Raises:
        DataError: the run directory already holds a run and --resume was not given.
    """
    from data.datasets import check_dataset, check_root

    run, data = settings.run, settings.data
    check_root(data.dataset, data.data_dir)
    dist = init_distributed(run.device)
    device = dist.device if dist.enabled else resolve_device(run.device)
    amp = amp_dtype(run.amp, device)  # one-line error for --amp fp16 on a CPU, before any work
    run_dir = run_dir_for(run, data)
    run_on_main(lambda: check_writable(run_dir, "--output-dir"), dist)  # before any work, not at the first save
    # Rank 0 looks and tells the others: every rank then takes the same branch, even when rank 0
    # has already created files or the other ranks do not see rank 0's file system.
    existing = run_on_main(lambda: os.path.exists(os.path.join(run_dir, last_checkpoint)), dist)
    if existing and not run.resume:
        raise DataError(f"{run_dir} already holds a {run.folder} run; pass --resume to continue it, "
                        "or choose another --output-dir")
    flags = dict(run.flags)
    if isinstance(settings, Stage2Settings):  # saved with the run's checkpoints: a resume checks stage 1 is the same
        flags["stage1_inputs"] = run_on_main(
            lambda: stage1_digests(settings.resume_net1, settings.baseline_artifact), dist)
    warning = run_on_main(lambda: claim_run_dir(flags, run_dir, last_checkpoint if existing else None), dist)
    check_dataset(data.dataset, data.data_dir, data.trial)  # every list resolvable before the first epoch
    logger = setup_logger(run_dir, run.folder, enabled=dist.is_main)
    if warning:
        logger.warning(warning)
    if dist.is_main:
        record = run_record(flags)
        # log.txt collects every start of the run (a failed attempt, its corrected rerun, --resume): mark each
        logger.info(f"==== start {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)} "
                    f"(code {record['code_version'][:12]})")
        write_args(run_dir, record)
        remove_orphan_temps(run_dir, logger)
    # Same seed on every rank: samplers generate identical global batches and slice them per rank.
    seed_everything(settings.schedule.seed)
    cache_dir = image_cache_dir(data)
    logger.info(f"{run.folder}: dataset {data.dataset}{'' if data.trial is None else ' trial %s' % data.trial}, "
                f"device {device}{' x %d processes (torchrun)' % dist.world_size if dist.enabled else ''}, "
                f"run dir {run_dir}, image cache {cache_dir or 'none (decoding images)'}"
                f"{', resuming' if existing else ''}")
    return RunContext(run_dir=run_dir, device=device, logger=logger, dist=dist, data=data, cache_dir=cache_dir,
                      amp=amp, flags=flags, observers=observers or Observers())


def image_cache_dir(data: DataSettings) -> Optional[str]:
    """--cache-dir, else <data-dir>/mmm_cache when it exists, else None (decode the JPEGs).

    Raises:
        DataError: a --cache-dir that does not exist.
    """
    cache_dir = data.cache_dir or default_cache_dir(data.data_dir)
    if os.path.isdir(cache_dir):
        return cache_dir
    if data.cache_dir:
        raise DataError(f"--cache-dir {data.cache_dir} does not exist; run scripts/prepare_data.py first")
    return None


def claim_run_dir(flags: Dict[str, Any], run_dir: str, last_checkpoint: Optional[str]) -> Optional[str]:
    """Lock ``run_dir`` for this process and, when resuming from ``last_checkpoint`` (relative to it),
    check that the command (its ``flags``) defines the same run as the checkpoint (stage 2: and the same
    stage-1 inputs, ``flags["stage1_inputs"]``); nothing is written before. Rank 0 only. Returns the
    lock's warning (a stale lock taken over) or None.

    Raises:
        DataError: another run holds the folder, or the flags or the stage-1 inputs differ from the run's.
    """
    _, warning = acquire_lock(run_dir)
    if last_checkpoint is not None:
        path = os.path.join(run_dir, last_checkpoint)
        ckpt = load_checkpoint(path, flag="--resume")
        check_compatible(ckpt, path, dataset=flags["dataset"], trial=flags["trial"])
        check_same_run(ckpt.get("args") or {}, flags, path)
    return warning


def check_writable(folder: str, flag: str) -> None:
    """Create ``folder`` and write a probe file in it.

    Raises:
        DataError: naming ``flag`` and the reason (read-only file system, permissions, a file in the way).
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe_"):
            pass
    except OSError as err:
        raise DataError(f"{flag}: cannot write into {folder} ({err.strerror or err}); choose a writable "
                        f"{flag}") from None


def code_version() -> str:
    """``git rev-parse HEAD`` of this code's repository, or ``"unknown"`` (no git, not a clone)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def run_record(flags: Dict[str, Any]) -> dict:
    """What ``args.json`` records: the resolved flags with absolute paths, plus the code version."""
    record = dict(flags)
    for key in PATH_FLAGS:
        if record.get(key):
            record[key] = os.path.abspath(record[key])
    pretrained = record.get("pretrained")
    if pretrained and os.path.isfile(pretrained):
        record["pretrained"] = os.path.abspath(pretrained)
    record["code_version"] = code_version()
    return record


def remove_orphan_temps(run_dir: str, logger, before: Optional[float] = None) -> list:
    """Delete ``.tmp_*.pth`` left in ``run_dir`` (and below) by a checkpoint write that was killed.

    Called at the start of a run, before this run writes any checkpoint: only files last modified
    before ``before`` (default: a minute ago) are removed, so a write in progress (its file keeps
    changing) is never touched. Returns their paths.
    """
    before = time.time() - 60 if before is None else before
    removed = []
    for path in sorted(glob.glob(os.path.join(run_dir, "**", ".tmp_*.pth"), recursive=True)):
        try:
            if os.path.getmtime(path) < before:
                size = os.path.getsize(path)
                os.remove(path)
                removed.append(path)
                logger.info(f"removed {path} ({size / 2**20:.1f} MiB), left by an interrupted checkpoint write")
        except OSError:  # gone meanwhile or not ours to delete: leave it
            continue
    return removed


class Timer:
    """Seconds since construction (for the per-epoch report)."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
