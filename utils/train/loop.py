"""The training loop of both stages: one epoch of steps, one checked optimizer step, one rule for when
to evaluate.

A stage hands :func:`train_epoch` a ``step`` (what one iteration does: fetch its batches, compute its
losses, call :func:`checked_step`) and the iterable it consumes; the loop keeps the progress bar and the
running sums of the losses (read from the device once per progress print, :func:`fetch_sums`).
:func:`checked_step` is every optimizer step's one host sync: is the summed loss finite on every
process? If not, the stage's one-line :class:`utils.train.divergence.DivergenceError` is raised
before the weights see it.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch

from utils.device import optimizer_step
from utils.distributed import all_ranks_true

Losses = Dict[str, torch.Tensor]


def add_losses(sums: Losses, losses: Losses) -> None:
    """Accumulate detached scalar ``losses`` into ``sums`` on their device, in float64 (as Python floats
    would: the logged means are bit-identical to summing ``float(v)``), without reading them."""
    for k, v in losses.items():
        v = v.detach().to(torch.float64)
        sums[k] = sums[k] + v if k in sums else v


def fetch_sums(sums: Losses) -> Dict[str, float]:
    """The accumulated sums as Python floats, read from the device in one transfer."""
    if not sums:
        return {}
    return dict(zip(sums, torch.stack(list(sums.values())).tolist()))


def checked_step(losses: Losses, optimizer, ctx, diverged: Callable[[], Exception], scaler=None,
                 scale: Optional[int] = None) -> Losses:
    """zero_grad -> backward -> step on the sum of ``losses`` (through ``scaler`` under ``--amp fp16``),
    after the step's one host sync: is that sum finite on every process? If not, raise ``diverged()``.

    ``scale``: the loss is multiplied by it before backward (stage 2 under torchrun: each process's
    gradient reaches only its local rows and DDP averages over processes). Returns the losses, detached.
    """
    loss = sum(losses.values())
    if not all_ranks_true(torch.isfinite(loss.detach()), ctx.dist):
        raise diverged()
    optimizer_step(loss if scale is None else loss * scale, optimizer, scaler)
    return {k: v.detach() for k, v in losses.items()}


def train_epoch(step: Callable[[object], Losses], batches: Iterable, model, ctx, print_freq: int,
                desc: str = "train", total: Optional[int] = None) -> Dict[str, float]:
    """One epoch: ``step(b)`` for every ``b`` of ``batches`` (``total`` of them, for the progress bar;
    default ``len(batches)``), with ``model`` in training mode. Returns the mean of each loss over the
    iterations (Python floats); the running means are shown every ``print_freq`` iterations."""
    from tqdm import tqdm

    model.train()
    total = len(batches) if total is None else total
    sums: Losses = {}
    bar = tqdm(batches, total=total, desc=desc, leave=False, disable=not ctx.dist.is_main)
    for it, batch in enumerate(bar):
        add_losses(sums, step(batch))
        if (it + 1) % print_freq == 0 and ctx.dist.is_main:
            bar.set_postfix({k: f"{v / (it + 1):.3f}" for k, v in fetch_sums(sums).items()})
    return {k: v / max(total, 1) for k, v in fetch_sums(sums).items()}


def evaluation_due(epoch: int, eval_step: int, epochs: int, first: bool = True) -> bool:
    """Whether a stage evaluates after 1-based ``epoch``: every ``eval_step`` epochs and after the last
    (``eval_step`` 0 = never). With ``first=False`` (stage 2, as released) the first epoch is never
    evaluated unless it is the last, so it can never be chosen as the best."""
    if eval_step <= 0:
        return False
    if epoch == epochs:
        return True
    return epoch % eval_step == 0 and (first or epoch > 1)
