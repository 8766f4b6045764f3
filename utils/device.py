"""Device choice, numerics (TF32, mixed precision) and multi-GPU wrapping.

Nothing here touches CUDA_VISIBLE_DEVICES, and nothing changes a torch setting at import time: the
entry points call :func:`configure_backends` once, after the device is known.
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from data.sample import DataError
from utils.arg_types import available_cores


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
    if device.type == "cuda" and device.index is not None:
        parallel_device_ids(device.index, torch.cuda.device_count())  # one-line error for a missing GPU
    return device


#: Values of ``--amp`` (``True`` = a bare ``--amp``, the old switch: see :func:`amp_dtype`).
AMP_MODES = ("off", "bf16", "fp16")
AmpMode = Union[str, bool, None]


def amp_dtype(amp: AmpMode, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype of an ``--amp`` value on ``device``; None = float32 (no autocast).

    ``"off"``/False/None → None; ``"bf16"`` → bfloat16; ``"fp16"`` → float16 (CUDA only); True (a bare
    ``--amp``, the old feature-extraction switch) → bfloat16 on the CPU and on GPUs that have it
    (Ampere and newer), float16 on older GPUs.

    Raises:
        DataError: an unknown value, or fp16 on a CPU (CPU autocast is bfloat16; float16 matrix
            products there are slow and gain nothing).
    """
    if amp in (None, False, "off"):
        return None
    if amp is True:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.float16
        return torch.bfloat16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise DataError(f"--amp fp16 needs a GPU (device {device}); on the CPU use --amp bf16 or --amp off")
        return torch.float16
    raise DataError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")


def autocast(dtype: Optional[torch.dtype], device: torch.device):
    """Context manager: ``torch.autocast`` to ``dtype`` (resolved once by :func:`amp_dtype`) on ``device``,
    or a no-op for float32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(dtype: Optional[torch.dtype], device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A gradient scaler for float16 training (its small exponent range underflows gradients), else None.

    bfloat16 has float32's exponent range and needs none."""
    if dtype is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def optimizer_step(loss: torch.Tensor, optimizer, scaler=None) -> None:
    """zero_grad → backward → step, through ``scaler`` when training in float16.

    With a scaler the loss is multiplied before backward and the gradients divided before the step;
    a step whose gradients overflowed is skipped and the scale lowered (torch.amp.GradScaler).
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def configure_backends(device: torch.device) -> None:
    """Process-wide numerics and speed settings, called once at start-up by the training entry points.

    On CUDA: float32 matrix products and convolutions may use TF32 (what the release's torch 1.8 did by
    default on GPUs that have it, so ``--amp off`` keeps the released numerics), and cuDNN picks the
    fastest convolution algorithms for the fixed input sizes (``cudnn.benchmark``). The exact k-NN
    search, MMLM's k-means and its cost switch TF32 off for themselves (clustering/knn.py
    ``exact_float32``). ``--device cuda:N`` becomes the current CUDA device.
    """
    if device.type != "cuda":
        return
    if device.index is not None:
        # The current device is what torch.cuda.synchronize(), the pin-memory thread and new CUDA
        # tensors without an index use: cuda:N, not GPU 0 (torchrun's processes set theirs already).
        torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


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
    cores = available_cores()
    busy = busy_cores()
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if busy >= cores / 2 else max(1, min(cores, cap))


def parallel_device_ids(index: Optional[int], count: int) -> List[int]:
    """GPUs that DataParallel uses for ``--device cuda:index`` (``None``: ``--device cuda``, from GPU 0)
    with ``count`` GPUs visible: ``index`` and every GPU after it.

    The model lives on the first of them (DataParallel's requirement), so ``cuda:N`` trains on GPUs
    N..count-1 and never touches the GPUs before N; ``cuda`` and ``cuda:0`` use all of them.
    """
    start = 0 if index is None else int(index)
    if not 0 <= start < count:
        raise DataError(f"--device cuda:{start} does not exist: {count} GPU(s) are visible (cuda:0 .. "
                        f"cuda:{count - 1})")
    return list(range(start, count))


def maybe_data_parallel(model: nn.Module, device: torch.device, distributed: bool = False) -> nn.Module:
    """Wrap ``model`` in ``nn.DataParallel`` over :func:`parallel_device_ids` when that gives several
    GPUs and we are not under DDP.

    DataParallel splits every batch over the GPUs, so BatchNorm statistics are computed per replica
    (as in the released code); results therefore depend on the GPU count.
    """
    if device.type != "cuda" or distributed:
        return model
    ids = parallel_device_ids(device.index, torch.cuda.device_count())
    return AutocastDataParallel(model, device_ids=ids) if len(ids) > 1 else model


def in_autocast(fn, device_type: str, dtype: torch.dtype):
    """``fn`` wrapped so that it runs under ``torch.autocast(device_type, dtype)`` in whatever thread calls it."""
    def run(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return fn(*args, **kwargs)
    return run


def replica_count(sizes: Sequence[int], gpus: int) -> int:
    """Replicas a DataParallel forward over ``gpus`` GPUs may use for inputs of ``sizes`` rows each: the
    largest r <= ``gpus`` for which ``Tensor.chunk(r)`` cuts every input into exactly r pieces.

    torch's scatter chunks each input separately and zips the pieces, so when, e.g., the 32 visible
    views and the 16 infrared images of a batch split into 5 and 4 pieces on 5 GPUs (7 and 6 on 7), the
    last visible piece would be dropped silently. With r replicas (4 and 6 there) every piece has a partner.
    """
    for r in range(min([gpus, *sizes]), 1, -1):
        if all(len(range(0, n, -(-n // r))) == r for n in sizes):  # chunk(r) of n rows: ceil(n / r) each
            return r
    return 1


class AutocastDataParallel(nn.DataParallel):
    """``nn.DataParallel`` whose replica threads autocast to the caller's dtype, and whose scatter
    never drops rows (:func:`replica_count`).

    Autocast state is per thread, and torch's parallel_apply hands its worker threads only "enabled": a
    bfloat16 region (``--amp bf16``) would run the replicas in the default float16, without a gradient
    scaler. Here each replica runs inside an autocast of the caller's dtype.
    """

    def scatter(self, inputs, kwargs, device_ids):
        sizes = [len(t) for t in (*inputs, *(kwargs or {}).values()) if isinstance(t, torch.Tensor)]
        return super().scatter(inputs, kwargs, device_ids[:replica_count(sizes, len(device_ids))])

    def parallel_apply(self, replicas, inputs, kwargs):
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            replicas = [in_autocast(r, "cuda", dtype) for r in replicas]
        return super().parallel_apply(replicas, inputs, kwargs)


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

    ``nn.DataParallel`` scatters ``x_rgb`` and ``x_ir`` separately (``Tensor.chunk`` over the
    :func:`replica_count` replicas that :class:`AutocastDataParallel` uses) and each replica returns
    [its rgb chunk; its ir chunk], so the gathered rows interleave the modalities. Returns None when the
    model is not DataParallel (rows are already in order).
    """
    if not isinstance(model, nn.DataParallel):
        return None
    k = replica_count((n_rgb, n_ir), len(model.device_ids))
    rgb = torch.arange(n_rgb).chunk(k)
    ir = (torch.arange(n_ir) + n_rgb).chunk(k)
    gathered = torch.cat([part for pair in zip(rgb, ir) for part in pair])  # row j holds sample gathered[j]
    return torch.argsort(gathered)       # row of sample s in the gathered output
