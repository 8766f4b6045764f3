"""The end of a training epoch and the resume, written once for both stages.

End of an epoch (:func:`finish_epoch`): evaluate when due, track the best model, give every rank
rank 0's buffers, write ``last.pth`` (and the weights-only ``best.pth``), append the epoch's line to
``metrics.jsonl``, log the epoch line, wait for every rank. Resume (:func:`resume_from`): restore the
model, optimizer, scheduler and the checkpoint's own metrics line, and log where the run continues.

A stage describes its differences in an :class:`EpochEnd`: checkpoint stage/phase names, folder,
which metric selects the best model and when it evaluates. Epochs are 1-based in every record,
checkpoint and log line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from utils.checkpoint import load_model_state, make_checkpoint, save_checkpoint
from utils.distributed import barrier, state_digest, sync_buffers
from utils.run import Timer
from utils.runlog import append_metrics, restore_metrics
from utils.train.callbacks import OBSERVERS


@dataclass(frozen=True)
class EpochEnd:
    """What differs between the stages at the end of an epoch.

    Attributes:
        stage: checkpoint ``stage`` ("baseline" | "mmm").
        phase: checkpoint ``phase`` ("intra" | "joint" | "train").
        folder: where ``last.pth`` and ``best.pth`` go.
        tag: first word of the epoch log line ("intra", "joint", "mmm").
        select: key of the first protocol's mean that selects ``best.pth`` ("mAP" | "r1").
        due: whether to evaluate after a 1-based epoch.
        evaluate: runs the test protocol on rank 0, logs its lines, returns its results.
        shown: prefixes of the record keys the epoch line shows (in record order).
        lr_format: format of the learning rate in the epoch line.
        observed: (stage, phase) under which observers hear of the epoch (see callbacks.py).
    """

    stage: str
    phase: str
    folder: str
    tag: str
    select: str
    due: Callable[[int], bool]
    evaluate: Callable[[], Dict]
    shown: Tuple[str, ...]
    lr_format: str
    observed: Tuple[str, Optional[str]]


def every_eval_step(eval_step: int, epochs: int) -> Callable[[int], bool]:
    """Stage 1's rule: evaluate after every ``eval_step``-th epoch and after the last (0 = never)."""
    return lambda epoch: eval_step > 0 and (epoch % eval_step == 0 or epoch == epochs)


def finish_epoch(end: EpochEnd, model, record: Dict, best: float, timer: Timer, args, ctx, optimizer,
                 scheduler=None, extra: Optional[Dict] = None, observed: Optional[Dict] = None) -> float:
    """Evaluate (when due), checkpoint, append the metrics line, log; returns the best metric so far.

    Args:
        record: the epoch's metrics line, with the 1-based ``epoch`` and ``lr``; ``eval`` and
            ``seconds`` are added here.
        best: the best selection metric before this epoch (-1 = none yet).
        extra: saved under the checkpoints' ``extra`` (stage 2: its prototypes, each (C, D)).
        observed: more values for the ``epoch_end`` observers (stage 2: the prototypes).
    """
    epoch = record["epoch"]
    is_best = False
    if end.due(epoch) and ctx.dist.is_main:
        results = end.evaluate()
        record["eval"] = {k: v["mean"] for k, v in results.items()}
        metric = next(iter(results.values()))["mean"][end.select]
        is_best, best = metric > best, max(best, metric)
    record["seconds"] = timer()
    sync_buffers(model, ctx.dist)  # all ranks hold the state that rank 0 saves
    if OBSERVERS:
        OBSERVERS.notify("epoch_end", rank=ctx.dist.rank, stage=end.observed[0], phase=end.observed[1],
                         epoch=epoch, values=lambda: {**state_digest(model), **(observed or {})})
    if ctx.dist.is_main:
        ckpt = make_checkpoint(model, stage=end.stage, phase=end.phase, dataset=args.dataset, trial=args.trial,
                               epoch=epoch, args=vars(args), optimizer=optimizer, scheduler=scheduler,
                               metrics=record, best_metric=best, extra=extra)
        write_checkpoint(ckpt, os.path.join(end.folder, "last.pth"), ctx, end.observed[0])
        if is_best:  # weights (and extra) only: resuming reads last.pth
            write_checkpoint(dict(ckpt, optimizer=None, scheduler=None), os.path.join(end.folder, "best.pth"),
                             ctx, end.observed[0])
        append_metrics(ctx.run_dir, record)
    ctx.logger.info(f"[{end.tag} {epoch}/{args.epochs}] lr {record['lr']:{end.lr_format}} " +
                    "  ".join(f"{k} {v:.3f}" for k, v in record.items() if k.startswith(end.shown)) +
                    f"  {record['seconds']:.0f}s" + ("  (best)" if is_best else ""))
    barrier(ctx.dist)
    return best


def write_checkpoint(ckpt: Dict, path: str, ctx, stage: str) -> None:
    """Save ``ckpt`` (rank 0 only) and tell the observers."""
    save_checkpoint(ckpt, path)
    if OBSERVERS:
        OBSERVERS.notify("checkpoint", rank=ctx.dist.rank, stage=stage, phase=None, epoch=None, path=path)


def resume_from(ckpt: Dict, src: str, model, optimizer, ctx, scheduler=None, what: str = "") -> Tuple[int, float]:
    """Continue a run from its ``last.pth`` (read by rank 0 and broadcast): restore the weights, the
    optimizer (and scheduler) state, and the checkpoint's own line of ``metrics.jsonl`` if the run was
    killed between the two writes.

    Args:
        what: names the part resumed in the log line ("intra phase ", "joint phase " or "").
    Returns:
        (epochs complete = the next 0-based epoch index, best selection metric so far or -1).
    """
    load_model_state(model, ckpt, src)
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ctx.dist.is_main and ckpt.get("metrics"):
        restore_metrics(ctx.run_dir, ckpt["metrics"])
    ctx.logger.info(f"resumed {what}from {src}: epoch {ckpt['epoch']} was complete, continuing with epoch "
                    f"{ckpt['epoch'] + 1}")
    return ckpt["epoch"], ckpt.get("best_metric") or -1.0
