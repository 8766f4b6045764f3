"""The end of a training epoch and the resume, written once for both stages.

End of an epoch (:func:`finish_epoch`): evaluate when due, track the best model, give every rank
rank 0's buffers, write ``last.pth`` (and the weights-only ``best.pth``), append the epoch's line to
``metrics.jsonl``, log the epoch line, wait for every rank. Resume (:func:`resume_from`): restore the
model, optimizer, scheduler and the checkpoint's own metrics line, and log where the run continues.

A stage describes its differences in an :class:`EpochEnd`: checkpoint stage/phase names, folder,
which metric selects the best model and when it evaluates; what it trains is a :class:`TrainState`.
Epochs are 1-based in every record, checkpoint and log line. :func:`evaluate_run` is both stages'
evaluation (the one test-protocol entry, utils/evaluation/protocols.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from utils.checkpoint import add_training_state, load_model_state, make_checkpoint, save_checkpoint
from utils.distributed import barrier, state_digest, sync_buffers
from utils.device import unwrap
from utils.evaluation.protocols import evaluate, mean_lines
from utils.run import Timer
from utils.runlog import append_metrics, restore_metrics
from utils.settings import TEST_INTERPOLATION, EvalSettings
from utils.train.loop import evaluation_due


@dataclass(frozen=True)
class EpochEnd:
    """What differs between the stages at the end of an epoch.

    Attributes:
        stage: checkpoint ``stage`` ("baseline" | "mmm").
        phase: checkpoint ``phase`` ("intra" | "joint" | "train").
        folder: where ``last.pth`` and ``best.pth`` go.
        tag: first word of the epoch log line ("intra", "joint", "mmm").
        select: key of the first protocol's mean that selects ``best.pth`` ("mAP" | "r1").
        epochs, eval_step, first_evaluated: when to evaluate (:func:`utils.train.loop.evaluation_due`).
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
    epochs: int
    eval_step: int
    evaluate: Callable[[], Dict]
    shown: Tuple[str, ...]
    lr_format: str
    observed: Tuple[str, Optional[str]]
    first_evaluated: bool = True


@dataclass
class TrainState:
    """What an epoch trains and checkpoints: the (wrapped) model, its optimizer (and scheduler), and
    stage 2's prototypes ``{"v1", "v2", "ir"}``, each (C, D) (None in stage 1)."""

    model: object
    optimizer: object
    scheduler: object = None
    protos: Optional[Dict] = None


def finish_epoch(end: EpochEnd, state: TrainState, record: Dict, best: float, timer: Timer, ctx) -> float:
    """Evaluate (when due), checkpoint, append the metrics line, log; returns the best metric so far.

    Args:
        record: the epoch's metrics line, with the 1-based ``epoch`` and ``lr``; ``eval`` and
            ``seconds`` are added here.
        best: the best selection metric before this epoch (-1 = none yet).
    """
    epoch, model = record["epoch"], state.model
    is_best = False
    if evaluation_due(epoch, end.eval_step, end.epochs, end.first_evaluated) and ctx.dist.is_main:
        results = end.evaluate()
        record["eval"] = {k: v["mean"] for k, v in results.items()}
        metric = next(iter(results.values()))["mean"][end.select]
        is_best, best = metric > best, max(best, metric)
    record["seconds"] = timer()
    sync_buffers(model, ctx.dist)  # all ranks hold the state that rank 0 saves
    ctx.observers.notify("epoch_end", rank=ctx.dist.rank, stage=end.observed[0], phase=end.observed[1],
                         epoch=epoch, values=lambda: {**state_digest(model), **(state.protos or {})})
    if ctx.dist.is_main:
        save_epoch(end, state, record, best, is_best, ctx)
    ctx.logger.info(f"[{end.tag} {epoch}/{end.epochs}] lr {record['lr']:{end.lr_format}} " +
                    "  ".join(f"{k} {v:.3f}" for k, v in record.items() if k.startswith(end.shown)) +
                    f"  {record['seconds']:.0f}s" + ("  (best)" if is_best else ""))
    barrier(ctx.dist)
    return best


def save_epoch(end: EpochEnd, state: TrainState, record: Dict, best: float, is_best: bool, ctx) -> None:
    """Rank 0: ``last.pth`` (resumable), the weights-only ``best.pth`` when ``is_best``, the metrics line."""
    extra = None if state.protos is None else {"prototypes": {k: v.cpu() for k, v in state.protos.items()}}
    ckpt = make_checkpoint(state.model, stage=end.stage, phase=end.phase, dataset=ctx.data.dataset,
                           trial=ctx.data.trial, epoch=record["epoch"], args=ctx.flags, metrics=record)
    add_training_state(ckpt, state.optimizer, state.scheduler, best_metric=best, extra=extra)
    write_checkpoint(ckpt, os.path.join(end.folder, "last.pth"), ctx, end.observed[0])
    if is_best:  # weights (and extra) only: resuming reads last.pth
        write_checkpoint(dict(ckpt, optimizer=None, scheduler=None), os.path.join(end.folder, "best.pth"),
                         ctx, end.observed[0])
    append_metrics(ctx.run_dir, record)


def write_checkpoint(ckpt: Dict, path: str, ctx, stage: str) -> None:
    """Save ``ckpt`` (rank 0 only) and tell the observers."""
    save_checkpoint(ckpt, path)
    ctx.observers.notify("checkpoint", rank=ctx.dist.rank, stage=stage, phase=None, epoch=None, path=path)


def resume_from(ckpt: Dict, src: str, state: TrainState, ctx, what: str = "") -> Tuple[int, float]:
    """Continue a run from its ``last.pth`` (read by rank 0 and broadcast): restore the weights, the
    optimizer (and scheduler) state of ``state``, and the checkpoint's own line of ``metrics.jsonl`` if
    the run was killed between the two writes.

    Args:
        what: names the part resumed in the log line ("intra phase ", "joint phase " or "").
    Returns:
        (epochs complete = the next 0-based epoch index, best selection metric so far or -1).
    """
    load_model_state(state.model, ckpt, src)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.scheduler is not None:
        state.scheduler.load_state_dict(ckpt["scheduler"])
    if ctx.dist.is_main and ckpt.get("metrics"):
        restore_metrics(ctx.run_dir, ckpt["metrics"])
    ctx.logger.info(f"resumed {what}from {src}: epoch {ckpt['epoch']} was complete, continuing with epoch "
                    f"{ckpt['epoch'] + 1}")
    return ckpt["epoch"], ckpt.get("best_metric") or -1.0


def evaluate_run(model, settings: EvalSettings, ctx) -> Dict:
    """A training run's evaluation (rank 0): the test protocol of ``settings`` on the unwrapped model,
    with the run's image cache and --amp; logs each protocol's mean line and returns the results."""
    results = evaluate(unwrap(model), settings, ctx.device, cache=ctx.cache(TEST_INTERPOLATION), amp=ctx.amp,
                       progress=False).results
    for line in mean_lines(results):
        ctx.logger.info(line)
    return results
