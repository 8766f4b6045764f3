"""Stage 1 (method.md A.2, D): intra-modality phase, joint phase, export of the hand-off artifact.

:func:`run_stage1` runs :func:`run_phase` for each phase; each epoch (:func:`train_one_epoch`):
:func:`cluster_step` (flip-averaged features -> Jaccard/DBSCAN per modality, and jointly in the joint
phase) -> ``memories_step`` (cluster memories) -> ``loaders_step`` -> ``--iters`` iterations of
:func:`epoch_steps` through the shared loop (utils/train/loop.py) -> ``finish_epoch`` (evaluate every
``--eval-step``, best mAP, checkpoints; utils/train/epoch_end.py). After both phases :func:`export`
writes the hand-off to stage 2.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from clustering.ari import pseudo_label_ari
from data.datasets import load_train
from data.sample import IR, RGB, pids_of
from data.transforms import build_train_transforms
from utils.artifacts import save_artifact
from utils.checkpoint import load_checkpoint, load_model_state, make_checkpoint
from utils.device import configure_backends, grad_scaler, unwrap
from utils.distributed import all_gather_rows, barrier, decorrelate_rng, mean_over_ranks, run_on_main, sync_buffers
from utils.evaluation.features import Extraction, extract_features
from utils.run import Timer, prepare_run
from utils.settings import CLUSTER_INTERPOLATION, Stage1Settings
from utils.train.callbacks import Observers
from utils.train.divergence import diverged_at
from utils.train.epoch_end import EpochEnd, TrainState, evaluate_run, finish_epoch, resume_from, write_checkpoint
from utils.train.loop import checked_step, train_epoch
from utils.train.network import build_network, place_network
from utils.train.stage1_steps import (cluster_epoch, clustering_report, current_lr, loaders_step, memories_step,
                                      memory_step, trainable)

PHASES = ("intra", "joint")


def extract_train(model, samples, settings: Stage1Settings, ctx, desc: str) -> torch.Tensor:
    """Clustering descriptors (N, D): (f(x) + f(flip x)) / 2, not re-normalised (D.2 step 1), on the
    training device (the clustering's k-NN search runs there).

    Under torchrun every rank embeds one contiguous shard and the shards are gathered.
    """
    data = settings.data
    how = Extraction(device=ctx.device, img_h=data.img_h, img_w=data.img_w, interpolation=CLUSTER_INTERPOLATION,
                     cache=ctx.cache(CLUSTER_INTERPOLATION), batch_size=settings.eval.batch_size,
                     workers=data.workers, flip=True, renormalize=False, amp=ctx.amp, progress=ctx.dist.is_main,
                     out_device=ctx.device)
    if not ctx.dist.enabled:
        return extract_features(model, samples, how, desc)
    sync_buffers(model, ctx.dist)  # every shard embedded with the same BatchNorm statistics
    per = math.ceil(len(samples) / ctx.dist.world_size)
    shard = list(samples[ctx.dist.rank * per:(ctx.dist.rank + 1) * per]) or [samples[-1]]
    shard += [shard[-1]] * (per - len(shard))  # equal sizes for all_gather
    f = extract_features(unwrap(model), shard, how, desc)
    return all_gather_rows(f, ctx.dist, len(samples))


def epoch_steps(state: TrainState, loaders, memories, ctx, scaler=None, diverged=None):
    """The step of one stage-1 iteration (for :func:`utils.train.loop.train_epoch`): a checked optimizer
    step on a batch of each modality against the intra-modality memories, and in the joint phase (when
    ``memories["joint"]`` exists) a second one on the joint loaders against the mixed memory.
    ``diverged()`` is the error raised for a non-finite loss."""
    iters = {k: iter(v) for k, v in loaders.items() if v is not None}
    pairs = [("", memories["rgb"], memories["ir"])]
    if memories.get("joint") is not None:
        pairs.append(("joint_", memories["joint"], memories["joint"]))

    def step(_) -> Dict[str, torch.Tensor]:
        out = {}
        for pre, m_rgb, m_ir in pairs:
            losses = memory_step(state.model, next(iters[pre + "rgb"]), next(iters[pre + "ir"]), m_rgb, m_ir,
                                 ctx.device, amp=ctx.amp)
            out.update({pre + k: v for k, v in checked_step(losses, state.optimizer, ctx, diverged, scaler).items()})
        return out
    return step


def diverged_in(phase: str, epoch: int, epochs: int, ctx):
    """The error of a non-finite loss in 0-based ``epoch`` of ``phase`` (a callable for the steps)."""
    folders = ("joint", "intra") if phase == "joint" else ("intra",)
    return diverged_at(f"stage 1, {phase} phase, epoch {epoch + 1}/{epochs}",
                       [os.path.join(ctx.run_dir, f, "last.pth") for f in folders], ctx.amp is not None)


def cluster_step(model, data, settings: Stage1Settings, ctx, joint: bool):
    """Step 1 of an epoch (D.2 steps 1-3): flip-averaged features of every training image and their
    DBSCAN pseudo-labels, per modality (and jointly in the joint phase).

    Returns:
        feats ``{"rgb": (N_rgb, D), "ir": (N_ir, D)}`` on the training device and labels
        ``{"rgb": (N_rgb,), "ir": (N_ir,)[, "joint": (N_rgb + N_ir,)]}`` int64, -1 = outlier
        (clustered on rank 0, the same on every rank).
    """
    feats = {m: extract_train(model, data[m], settings, ctx, desc=f"features {m}") for m in (RGB, IR)}
    return feats, run_on_main(lambda: cluster_epoch(feats, settings.cluster, joint), ctx.dist)


def log_clustering(labels: Dict[str, np.ndarray], data, report_ari: bool, ctx, tag: str) -> Dict[str, float]:
    """Cluster and outlier counts (and with --report-ari the ARI against ground truth) of the labels
    ``{"rgb": (N_rgb,), "ir": (N_ir,)[, "joint": (N_rgb + N_ir,)]}``, logged."""
    report = clustering_report(labels, len(data[RGB]))
    if report_ari:
        report.update(pseudo_label_ari(labels, {m: pids_of(data[m]) for m in (RGB, IR)}))
    ctx.logger.info(f"{tag} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in report.items()))
    return report


def notify_labels(labels, memories, phase: str, epoch: int, ctx) -> None:
    """Tell the observers (callbacks.py) the epoch's pseudo-labels and initial memories."""
    ctx.observers.notify("labels", rank=ctx.dist.rank, stage="stage1", phase=phase, epoch=epoch, values=lambda: {
        **labels, **{f"memory_{m}": memories[m].features for m in (RGB, IR) if memories[m] is not None}})


def phase_checkpoint(phase: str, run_dir: str):
    """(path, checkpoint) a phase starts from: its own last.pth, for the joint phase else the intra
    phase's best (or last) model; (None, None) for a fresh intra phase."""
    last = os.path.join(run_dir, phase, "last.pth")
    if os.path.exists(last):
        return last, load_checkpoint(last)
    if phase == "joint":
        src = os.path.join(run_dir, "intra", "best.pth")
        src = src if os.path.exists(src) else os.path.join(run_dir, "intra", "last.pth")
        return src, load_checkpoint(src)
    return None, None


def phase_start(phase: str, state: TrainState, ctx) -> Tuple[int, float]:
    """Resume a phase from its last.pth, or start the joint phase from the intra phase's best model;
    returns (first 0-based epoch, best mAP so far or -1).

    Rank 0 reads the checkpoint and broadcasts it, so the other ranks need neither a shared file
    system nor a barrier to see the files rank 0 wrote.
    """
    src, ckpt = run_on_main(lambda: phase_checkpoint(phase, ctx.run_dir), ctx.dist)
    if ckpt is None:
        return 0, -1.0
    if ckpt["phase"] == phase:
        return resume_from(ckpt, src, state, ctx, what=f"{phase} phase ")
    load_model_state(state.model, ckpt, src)
    ctx.logger.info(f"joint phase starts from {src}")
    return 0, -1.0


def epoch_end_of(phase: str, model, settings: Stage1Settings, ctx) -> EpochEnd:
    """Stage 1's end of an epoch: best mAP, evaluated every --eval-step epochs and after the last."""
    return EpochEnd(stage="baseline", phase=phase, folder=os.path.join(ctx.run_dir, phase), tag=phase,
                    select="mAP", epochs=settings.schedule.epochs, eval_step=settings.schedule.eval_step,
                    evaluate=lambda: evaluate_run(model, settings.eval, ctx), shown=("loss_", "joint_loss_"),
                    lr_format=".2e", observed=("stage1", phase))


def train_one_epoch(phase: str, epoch: int, state: TrainState, data, settings: Stage1Settings, ctx, scaler=None):
    """0-based ``epoch`` of ``phase`` (D.2, D.3): cluster -> memories -> loaders -> ``--iters`` iterations.
    Returns the epoch's metrics line (clustering report and mean losses; no losses when training was
    skipped)."""
    joint, tag = phase == "joint", f"[{phase} {epoch + 1}/{settings.schedule.epochs}]"
    feats, labels = cluster_step(state.model, data, settings, ctx, joint)
    report = log_clustering(labels, data, settings.schedule.report_ari, ctx, tag)
    memories = memories_step(feats, labels, settings.memory, ctx, joint)
    notify_labels(labels, memories, phase, epoch + 1, ctx)
    loaders = loaders_step(data, labels, settings, ctx, epoch, joint)
    lr = current_lr(state.optimizer)
    losses = {}
    if trainable(memories, loaders, report, settings.batches, ctx, joint, tag):
        diverged = diverged_in(phase, epoch, settings.schedule.epochs, ctx)
        step = epoch_steps(state, loaders, memories, ctx, scaler, diverged)
        # Each rank's loss is the mean over its slice; their average is the global-batch loss.
        losses = mean_over_ranks(train_epoch(step, range(settings.batches.iters), state.model, ctx,
                                             settings.schedule.print_freq), ctx.dist)
    record = dict(phase=phase, epoch=epoch + 1, lr=lr, **report, **losses)  # 1-based epochs
    if joint:  # False when the joint step was skipped ("too few cross-modality clusters")
        record["joint_trained"] = "joint_loss_rgb" in losses
    return record


def run_phase(phase: str, model, data, settings: Stage1Settings, ctx) -> None:
    """One phase of stage 1 (a fresh Adam + StepLR): per epoch cluster -> memories -> loaders -> train,
    then evaluate when due and checkpoint."""
    sched = settings.schedule
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=sched.lr, weight_decay=sched.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.batches.step_size, gamma=0.1)
    state = TrainState(model, optimizer, scheduler)
    start, best = phase_start(phase, state, ctx)
    scaler = grad_scaler(ctx.amp, ctx.device)  # float16 only; its scale adapts within a few steps
    end = epoch_end_of(phase, model, settings, ctx)
    for epoch in range(start, sched.epochs):
        timer = Timer()
        record = train_one_epoch(phase, epoch, state, data, settings, ctx, scaler)
        with warnings.catch_warnings():  # a skipped epoch made no optimizer step; the schedule still advances
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            scheduler.step()
        best = finish_epoch(end, state, record, best, timer, ctx)


def export(model, data, settings: Stage1Settings, ctx) -> str:
    """Hand-off to stage 2 (D.4): last model's features + intra-modality labels, and final.pth."""
    feats = {m: extract_train(model, data[m], settings, ctx, desc=f"export {m}") for m in (RGB, IR)}
    if not ctx.dist.is_main:
        return ""
    labels = cluster_epoch(feats, settings.cluster, joint=False)
    report = clustering_report(labels, len(data[RGB]))
    d, c = settings.data, settings.cluster
    meta = dict(dataset=d.dataset, trial=d.trial, eps=c.eps, k1=c.k1, k2=c.k2, data_dir=os.path.abspath(d.data_dir),
                arch=settings.model.arch, epochs=settings.schedule.epochs, **report)
    path = save_artifact(ctx.run_dir, d.data_dir, {m: data[m] for m in (RGB, IR)},
                         {m: feats[m].cpu().numpy() for m in (RGB, IR)}, labels, meta)
    ckpt = make_checkpoint(model, stage="baseline", phase="final", dataset=d.dataset, trial=d.trial,
                           epoch=settings.schedule.epochs, args=ctx.flags, metrics=report)
    write_checkpoint(ckpt, os.path.join(ctx.run_dir, "final.pth"), ctx, "stage1")
    ctx.logger.info(f"stage-1 artifact {path} ({report['rgb_clusters']} rgb / {report['ir_clusters']} ir "
                    f"clusters); checkpoint for stage 2: {os.path.join(ctx.run_dir, 'final.pth')}")
    return path


def run_files_exist(ctx, *paths: str) -> Tuple[bool, ...]:
    """Whether each of ``paths`` (relative to the run directory) exists, as rank 0 sees it (every rank
    then takes the same branch)."""
    return run_on_main(lambda: tuple(os.path.exists(os.path.join(ctx.run_dir, p)) for p in paths), ctx.dist)


def run_stage1(settings: Stage1Settings, observers: Optional[Observers] = None) -> str:
    """The whole of stage 1 (the intra phase, the joint phase, the export); returns the run directory.
    ``observers`` hear of the training events (utils/train/callbacks.py)."""
    ctx = prepare_run(settings, last_checkpoint=os.path.join("intra", "last.pth"), observers=observers)
    configure_backends(ctx.device)
    complete, in_joint = run_files_exist(ctx, "final.pth", os.path.join("joint", "last.pth"))
    if complete:
        ctx.logger.info(f"{ctx.run_dir} is complete (final.pth exists); nothing to do")
        return ctx.run_dir
    d = settings.data
    rgb, ir = load_train(d.dataset, d.data_dir, d.trial)
    ctx.logger.info(f"training images: {len(rgb)} rgb, {len(ir)} ir")
    data = {RGB: rgb, IR: ir, "transforms": build_train_transforms(d.img_h, d.img_w)}
    model = place_network(build_network(settings.model, ctx.device, log=ctx.logger.info), settings.model, ctx)
    decorrelate_rng(settings.schedule.seed, ctx.dist)
    for phase in PHASES:
        if phase == "intra" and in_joint:
            continue  # resuming inside the joint phase
        run_phase(phase, model, data, settings, ctx)
    export(model, data, settings, ctx)
    barrier(ctx.dist)
    return ctx.run_dir
