"""Typed settings for tests, made the way the entry points make them: through the real parsers
(utils/args.py) and builders (utils/settings.py), so a test never hand-writes a stand-in namespace."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch

from utils.args import stage1_parser, stage2_parser, parse
from utils.distributed import DistInfo
from utils.settings import Stage1Settings, Stage2Settings, stage1_settings, stage2_settings
from utils.train.callbacks import Observers


def stage1(*flags: str, dataset: str = "sysu") -> Stage1Settings:
    """Stage-1 settings of ``baseline_<dataset>.py --data-dir d <flags>``."""
    return stage1_settings(parse(stage1_parser(dataset), ["--data-dir", "d", *flags], dataset=dataset))


def stage2(*flags: str) -> Stage2Settings:
    """Stage-2 settings of ``main.py --dataset sysu --data-dir d --resume_net1 c.pth <flags>``."""
    return stage2_settings(parse(stage2_parser(), ["--dataset", "sysu", "--data-dir", "d", "--resume_net1", "c.pth",
                                                *flags]))


def context(settings=None, device: str = "cpu", amp=None, observers: Sequence = (), **extra) -> SimpleNamespace:
    """A stand-in run context (utils/run.RunContext's fields) without a run folder: one process, no
    image cache, no logging unless ``extra`` gives a logger or a run_dir."""
    data = settings.data if settings is not None else None
    return SimpleNamespace(device=torch.device(device), dist=DistInfo(), data=data, amp=amp,
                           cache=lambda interpolation: None, observers=Observers(observers),
                           flags={}, **extra)
