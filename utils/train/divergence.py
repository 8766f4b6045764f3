"""The training steps' one host sync and the error of a diverging run, shared by both stages.

A training step reads one value from the GPU: whether its summed loss is finite (:func:`loss_is_finite`,
before the optimizer step, so a NaN never reaches the weights). The logged losses stay on the device and
are read once per progress print (:func:`fetch_sums`). When the loss is not finite the run stops with one
line (:func:`divergence_error`) naming the epoch, the last checkpoint that exists and what to try.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Sequence

import torch
import torch.distributed as tdist

from data.sample import DataError


class DivergenceError(DataError):
    """The loss became NaN or inf: reported in one line with exit code 2 (utils/cli.py), not a traceback."""


def loss_is_finite(loss: torch.Tensor, dist) -> bool:
    """Whether the scalar ``loss`` is finite on every process (``dist``: a DistInfo): the step's one sync.

    Under torchrun the flag is reduced over the processes first, so all of them stop together instead of
    the others waiting in the next collective for the one that stopped.
    """
    ok = torch.isfinite(loss.detach()).to(torch.float32)
    if dist.enabled:
        tdist.all_reduce(ok, op=tdist.ReduceOp.MIN)
    return bool(ok)


def add_losses(sums: Dict[str, torch.Tensor], losses: Dict[str, torch.Tensor], prefix: str = "") -> None:
    """Accumulate detached scalar ``losses`` into ``sums`` on their device, in float64 (as Python floats
    would: the logged means are bit-identical to summing ``float(v)``), without reading them."""
    for k, v in losses.items():
        v = v.detach().to(torch.float64)
        sums[prefix + k] = sums[prefix + k] + v if prefix + k in sums else v


def fetch_sums(sums: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """The accumulated sums as Python floats, read from the device in one transfer."""
    if not sums:
        return {}
    return dict(zip(sums, torch.stack(list(sums.values())).tolist()))


def diverged_at(where: str, checkpoints: Sequence[str], amp: str = "off") -> Callable[[], DivergenceError]:
    """:func:`divergence_error` with these arguments, made only when a step needs it (the files are looked
    up then)."""
    return lambda: divergence_error(where, checkpoints, amp)


def divergence_error(where: str, checkpoints: Sequence[str], amp: str = "off") -> DivergenceError:
    """The one-line error of a non-finite loss.

    Args:
        where: the stage and the 1-based epoch, e.g. "stage 1, joint phase, epoch 3/40".
        checkpoints: the run's checkpoints that ``--resume`` continues from, most recent first; the
            first that exists is named (or the message says that none exists yet).
        amp: the ``--amp`` value (low precision is one more thing to switch off).
    """
    last = next((p for p in checkpoints if os.path.exists(p)), None)
    todo = "lower --lr (e.g. halve it)" + ("" if amp in (None, False, "off") else " or use --amp off")
    if last is None:
        return DivergenceError(f"the loss became NaN or inf in {where}; no checkpoint exists yet: start "
                               f"again with {todo}")
    return DivergenceError(f"the loss became NaN or inf in {where}; the last checkpoint is {last}: "
                           f"continue from it with --resume and {todo}")
