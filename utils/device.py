"""Device choice and multi-GPU wrapping. Nothing here touches CUDA_VISIBLE_DEVICES."""
from __future__ import annotations

import os
import random
import time
from typing import Optional

import numpy as np
import torch
from torch import nn

from data.sample import DataError


def resolve_device(name: Optional[str] = None) -> torch.device:
    """The device named by ``--device``: ``None``/``"auto"`` means cuda when available, else cpu.

    Raises:
        DataError: ``--device cuda`` was asked for but no GPU is visible.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name} was given but no GPU is visible; use --device cpu "
                        "(or check CUDA_VISIBLE_DEVICES and the torch CUDA build)")
    return device


def busy_cores(interval: float = 0.3) -> Optional[float]:
    """How many cores other work keeps busy right now: (1 - idle share) x cores over ``interval`` seconds,
    from /proc/stat; None where it cannot be read (then callers fall back to the load average, which
    lags by a minute and also counts this program's own finished work)."""
    def sample():
        with open("/proc/stat") as f:
            values = [float(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total
    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    return cores * (1.0 - (idle1 - idle0) / max(total1 - total0, 1e-9))


def default_threads(cap: int = 8) -> int:
    """CPU threads for one process: the cores it may use (at most ``cap``), but 1 when other work already
    keeps at least half of them busy. On a busy machine, OpenMP threads that spin waiting for each other
    make iterations many times slower than one thread does."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = busy_cores()
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if busy >= cores / 2 else max(1, min(cores, cap))


def maybe_data_parallel(model: nn.Module, device: torch.device, distributed: bool = False) -> nn.Module:
    """Wrap ``model`` in ``nn.DataParallel`` when several GPUs are visible and we are not under DDP.

    DataParallel splits every batch over the visible GPUs, so BatchNorm statistics are computed
    per replica (as in the released code); results therefore depend on the GPU count.
    """
    if device.type == "cuda" and not distributed and torch.cuda.device_count() > 1:
        return nn.DataParallel(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DataParallel / DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def replica_order(n_rgb: int, n_ir: int, model: nn.Module) -> Optional[torch.Tensor]:
    """Index that puts the outputs of a mixed rgb+ir forward back in [all rgb; all ir] order.

    ``nn.DataParallel`` scatters ``x_rgb`` and ``x_ir`` separately (``Tensor.chunk`` over the GPUs)
    and each replica returns [its rgb chunk; its ir chunk], so the gathered rows interleave the
    modalities. Returns None when the model is not DataParallel (rows are already in order).
    """
    if not isinstance(model, nn.DataParallel):
        return None
    k = len(model.device_ids)
    rgb = torch.arange(n_rgb).chunk(k)
    ir = (torch.arange(n_ir) + n_rgb).chunk(k)
    parts = []
    for i in range(max(len(rgb), len(ir))):
        parts.extend(p[i] for p in (rgb, ir) if i < len(p))
    gathered = torch.cat(parts)          # gathered row j holds sample gathered[j]
    return torch.argsort(gathered)       # row of sample s in the gathered output
