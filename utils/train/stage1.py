"""Stage 1 (method.md A.2, D): intra-modality phase, joint phase, export of the hand-off artifact.

Each epoch of :func:`run_phase`: :func:`cluster_step` (flip-averaged features -> Jaccard/DBSCAN per
modality, and jointly in the joint phase) -> ``memories_step`` (cluster memories) -> ``loaders_step``
-> :func:`train_epoch` (``--iters`` iterations) -> ``finish_epoch`` (evaluate every ``--eval-step``,
best mAP, checkpoints; utils/train/epoch_end.py). After both phases :func:`export` writes the
hand-off to stage 2.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Dict, Tuple

import numpy as np
import torch

from clustering.ari import pseudo_label_ari
from data.datasets import load_train
from data.sample import IR, RGB, DataError, pids_of
from data.specs import SPECS
from data.transforms import build_train_transforms
from model import build_model, describe_weights, to_channels_last
from utils.artifacts import save_artifact
from utils.checkpoint import load_checkpoint, load_model_state, make_checkpoint
from utils.device import configure_backends, grad_scaler, optimizer_step, unwrap
from utils.distributed import (all_gather_rows, barrier, decorrelate_rng, env_world_size, mean_over_ranks,
                               run_on_main, sync_buffers, wrap_model)
from utils.evaluation.features import extract_features
from utils.evaluation.protocols import evaluate, format_results
from utils.run import Timer, prepare_run
from utils.train.callbacks import OBSERVERS
from utils.train.divergence import DivergenceError, add_losses, diverged_at, fetch_sums, loss_is_finite
from utils.train.epoch_end import EpochEnd, every_eval_step, finish_epoch, resume_from, write_checkpoint
from utils.train.stage1_steps import (cluster_epoch, clustering_report, current_lr, loaders_step, memories_step,
                                      memory_step, trainable)

PHASES = ("intra", "joint")


def extract_train(model, samples, args, ctx, desc: str) -> torch.Tensor:
    """Clustering descriptors (N, D): (f(x) + f(flip x)) / 2, not re-normalised (D.2 step 1), on the
    training device (the clustering's k-NN search runs there).

    Under torchrun every rank embeds one contiguous shard and the shards are gathered.
    """
    kw = dict(device=ctx.device, img_h=args.img_h, img_w=args.img_w, interpolation="bicubic",
              cache=ctx.cache(args, "bicubic"), batch_size=args.test_batch, workers=args.workers,
              flip=True, renormalize=False, amp=args.amp, desc=desc, progress=ctx.dist.is_main,
              out_device=ctx.device)
    if not ctx.dist.enabled:
        return extract_features(model, samples, **kw)
    sync_buffers(model, ctx.dist)  # every shard embedded with the same BatchNorm statistics
    per = math.ceil(len(samples) / ctx.dist.world_size)
    shard = list(samples[ctx.dist.rank * per:(ctx.dist.rank + 1) * per]) or [samples[-1]]
    shard += [shard[-1]] * (per - len(shard))  # equal sizes for all_gather
    f = extract_features(unwrap(model), shard, **kw)
    return all_gather_rows(f, ctx.dist, len(samples))


def run_evaluation(model, args, ctx) -> Dict:
    """The test protocol with flip-averaged features (SYSU all + indoor, RegDB visible->thermal)."""
    spec = SPECS[args.dataset]
    results = evaluate(unwrap(model), args.dataset, args.data_dir, device=ctx.device, trial=args.trial,
                       modes=spec.eval_modes, gallery_trials=spec.gallery_trials,
                       directions=("visible2thermal",), img_h=args.img_h, img_w=args.img_w,
                       cache=ctx.cache(args, "lanczos"), batch_size=args.test_batch,
                       workers=args.workers, flip=True, amp=args.amp, progress=False)
    for line in format_results(results):
        if "MEAN" in line or spec.gallery_trials == 1:  # one split per protocol: its line is the result
            ctx.logger.info(line)
    return results


def train_step(model, optimizer, rgb_batch, ir_batch, m_rgb, m_ir, args, ctx, scaler=None,
               diverged=None) -> Dict[str, torch.Tensor]:
    """One optimizer step (through ``scaler`` under ``--amp fp16``) on a batch of each modality against
    the memories ``m_rgb`` and ``m_ir``: the losses of :func:`memory_step`, then the step's one host sync
    (is their sum finite? else raise ``diverged()``), backward and step. Returns the losses, detached,
    on the device."""
    losses = memory_step(model, rgb_batch, ir_batch, m_rgb, m_ir, ctx.device, amp=args.amp)
    loss = sum(losses.values())
    if not loss_is_finite(loss, ctx.dist):
        raise diverged() if diverged is not None else DivergenceError("the loss became NaN or inf")
    optimizer_step(loss, optimizer, scaler)
    return {k: v.detach() for k, v in losses.items()}


def train_epoch(model, optimizer, loaders, memories, args, ctx, joint: bool, scaler=None,
                diverged=None) -> Dict[str, float]:
    """``args.iters`` iterations; in the joint phase each iteration makes two optimizer steps
    (:func:`train_step`; ``diverged()`` is the error raised for a non-finite loss). Returns the mean
    of each loss over the iterations; the losses are read from the device once per progress print."""
    from tqdm import tqdm

    model.train()
    iters = {k: iter(v) for k, v in loaders.items() if v is not None}
    sums: Dict[str, torch.Tensor] = {}
    bar = tqdm(range(args.iters), desc="train", leave=False, disable=not ctx.dist.is_main)
    for it in bar:
        steps = [("intra", memories["rgb"], memories["ir"])]
        if joint and memories.get("joint") is not None:
            steps.append(("joint", memories["joint"], memories["joint"]))
        for name, m_rgb, m_ir in steps:
            pre = "" if name == "intra" else "joint_"
            losses = train_step(model, optimizer, next(iters[pre + "rgb"]), next(iters[pre + "ir"]), m_rgb, m_ir,
                                args, ctx, scaler, diverged)
            add_losses(sums, losses, pre)
        if (it + 1) % args.print_freq == 0 and ctx.dist.is_main:
            bar.set_postfix({k: f"{v / (it + 1):.3f}" for k, v in fetch_sums(sums).items()})
    # Each rank's loss is the mean over its slice; their average is the global-batch loss.
    return mean_over_ranks({k: v / args.iters for k, v in fetch_sums(sums).items()}, ctx.dist)


def diverged_in(phase: str, epoch: int, args, ctx):
    """The error of a non-finite loss in 0-based ``epoch`` of ``phase`` (a callable for train_epoch)."""
    folders = ("joint", "intra") if phase == "joint" else ("intra",)
    return diverged_at(f"stage 1, {phase} phase, epoch {epoch + 1}/{args.epochs}",
                       [os.path.join(ctx.run_dir, f, "last.pth") for f in folders], args.amp)


def cluster_step(model, data, args, ctx, joint: bool):
    """Step 1 of an epoch (D.2 steps 1-3): flip-averaged features of every training image and their
    DBSCAN pseudo-labels, per modality (and jointly in the joint phase).

    Returns:
        feats ``{"rgb": (N_rgb, D), "ir": (N_ir, D)}`` on the training device and labels
        ``{"rgb": (N_rgb,), "ir": (N_ir,)[, "joint": (N_rgb + N_ir,)]}`` int64, -1 = outlier
        (clustered on rank 0, the same on every rank).
    """
    feats = {m: extract_train(model, data[m], args, ctx, desc=f"features {m}") for m in (RGB, IR)}
    return feats, run_on_main(lambda: cluster_epoch(feats, args, joint), ctx.dist)


def log_clustering(labels: Dict[str, np.ndarray], data, args, ctx, tag: str) -> Dict[str, float]:
    """Cluster and outlier counts (and with --report-ari the ARI against ground truth) of the labels
    ``{"rgb": (N_rgb,), "ir": (N_ir,)[, "joint": (N_rgb + N_ir,)]}``, logged."""
    report = clustering_report(labels, len(data[RGB]))
    if args.report_ari:
        report.update(pseudo_label_ari(labels, {m: pids_of(data[m]) for m in (RGB, IR)}))
    ctx.logger.info(f"{tag} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in report.items()))
    return report


def notify_labels(labels, memories, phase: str, epoch: int, ctx) -> None:
    """Tell the observers (callbacks.py) the epoch's pseudo-labels and initial memories."""
    if OBSERVERS:
        OBSERVERS.notify("labels", rank=ctx.dist.rank, stage="stage1", phase=phase, epoch=epoch, values=lambda: {
            **labels, **{f"memory_{m}": memories[m].features for m in (RGB, IR) if memories[m] is not None}})


def _phase_checkpoint(phase: str, run_dir: str):
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


def phase_start(phase: str, model, optimizer, scheduler, ctx) -> Tuple[int, float]:
    """Resume a phase from its last.pth, or start the joint phase from the intra phase's best model;
    returns (first 0-based epoch, best mAP so far or -1).

    Rank 0 reads the checkpoint and broadcasts it, so the other ranks need neither a shared file
    system nor a barrier to see the files rank 0 wrote.
    """
    src, ckpt = run_on_main(lambda: _phase_checkpoint(phase, ctx.run_dir), ctx.dist)
    if ckpt is None:
        return 0, -1.0
    if ckpt["phase"] == phase:
        return resume_from(ckpt, src, model, optimizer, ctx, scheduler=scheduler, what=f"{phase} phase ")
    load_model_state(model, ckpt, src)
    ctx.logger.info(f"joint phase starts from {src}")
    return 0, -1.0


def epoch_end_of(phase: str, model, args, ctx) -> EpochEnd:
    """Stage 1's end of an epoch: best mAP, evaluated every --eval-step epochs and after the last."""
    return EpochEnd(stage="baseline", phase=phase, folder=os.path.join(ctx.run_dir, phase), tag=phase,
                    select="mAP", due=every_eval_step(args.eval_step, args.epochs),
                    evaluate=lambda: run_evaluation(model, args, ctx), shown=("loss_", "joint_loss_"),
                    lr_format=".2e", observed=("stage1", phase))


def run_phase(phase: str, model, data, args, ctx) -> None:
    """One phase of stage 1 (a fresh Adam + StepLR): per epoch cluster -> memories -> loaders -> train,
    then evaluate when due and checkpoint."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step_size, gamma=0.1)
    start, best = phase_start(phase, model, optimizer, scheduler, ctx)
    scaler = grad_scaler(args.amp, ctx.device)  # float16 only; its scale adapts within a few steps
    joint, end = phase == "joint", epoch_end_of(phase, model, args, ctx)
    for epoch in range(start, args.epochs):
        timer, tag = Timer(), f"[{phase} {epoch + 1}/{args.epochs}]"
        feats, labels = cluster_step(model, data, args, ctx, joint)
        report = log_clustering(labels, data, args, ctx, tag)
        memories = memories_step(feats, labels, args, ctx, joint)
        notify_labels(labels, memories, phase, epoch + 1, ctx)
        loaders = loaders_step(data, labels, args, ctx, epoch, joint)
        lr = current_lr(optimizer)
        losses = {}
        if trainable(memories, loaders, report, args, ctx, joint, tag):
            losses = train_epoch(model, optimizer, loaders, memories, args, ctx, joint, scaler,
                                 diverged_in(phase, epoch, args, ctx))
        with warnings.catch_warnings():  # a skipped epoch made no optimizer step; the schedule still advances
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            scheduler.step()
        record = dict(phase=phase, epoch=epoch + 1, lr=lr, **report, **losses)  # epochs 1-based for people
        if joint:  # False when the joint step was skipped ("too few cross-modality clusters")
            record["joint_trained"] = "joint_loss_rgb" in losses
        best = finish_epoch(end, model, record, best, timer, args, ctx, optimizer, scheduler)


def export(model, data, args, ctx) -> str:
    """Hand-off to stage 2 (D.4): last model's features + intra-modality labels, and final.pth."""
    feats = {m: extract_train(model, data[m], args, ctx, desc=f"export {m}") for m in (RGB, IR)}
    if not ctx.dist.is_main:
        return ""
    labels = cluster_epoch(feats, args, joint=False)
    report = clustering_report(labels, len(data[RGB]))
    meta = dict(dataset=args.dataset, trial=args.trial, eps=args.eps, k1=args.k1, k2=args.k2,
                data_dir=os.path.abspath(args.data_dir), arch=args.arch, epochs=args.epochs, **report)
    path = save_artifact(ctx.run_dir, args.data_dir, {m: data[m] for m in (RGB, IR)},
                         {m: feats[m].cpu().numpy() for m in (RGB, IR)}, labels, meta)
    ckpt = make_checkpoint(model, stage="baseline", phase="final", dataset=args.dataset, trial=args.trial,
                           epoch=args.epochs, args=vars(args), metrics=report)
    write_checkpoint(ckpt, os.path.join(ctx.run_dir, "final.pth"), ctx, "stage1")
    ctx.logger.info(f"stage-1 artifact {path} ({report['rgb_clusters']} rgb / {report['ir_clusters']} ir "
                    f"clusters); checkpoint for stage 2: {os.path.join(ctx.run_dir, 'final.pth')}")
    return path


def run_files_exist(ctx, *paths: str) -> Tuple[bool, ...]:
    """Whether each of ``paths`` (relative to the run directory) exists, as rank 0 sees it (every rank
    then takes the same branch)."""
    return run_on_main(lambda: tuple(os.path.exists(os.path.join(ctx.run_dir, p)) for p in paths), ctx.dist)


def build_stage1_model(args, ctx):
    """The network (--arch, --pretrained), wrapped for the devices (DDP, DataParallel or as is)."""
    model = build_model(arch=args.arch, num_classes=0, pretrained=args.pretrained).to(ctx.device)
    ctx.logger.info(f"backbone weights: {describe_weights(model)}")
    if args.channels_last:
        to_channels_last(model)
    return wrap_model(model, ctx.dist, ctx.device, sync_bn=args.sync_bn)


def run_baseline(args) -> str:
    """The whole of stage 1 (the intra phase, the joint phase, the export); returns the run directory."""
    ctx = prepare_run(args, "baseline", last_checkpoint=os.path.join("intra", "last.pth"))
    configure_backends(ctx.device, args.amp)
    complete, in_joint = run_files_exist(ctx, "final.pth", os.path.join("joint", "last.pth"))
    if complete:
        ctx.logger.info(f"{ctx.run_dir} is complete (final.pth exists); nothing to do")
        return ctx.run_dir
    rgb, ir = load_train(args.dataset, args.data_dir, args.trial)
    ctx.logger.info(f"training images: {len(rgb)} rgb, {len(ir)} ir")
    data = {RGB: rgb, IR: ir, "transforms": build_train_transforms(args.img_h, args.img_w)}
    model = build_stage1_model(args, ctx)
    decorrelate_rng(args.seed, ctx.dist)
    for phase in PHASES:
        if phase == "intra" and in_joint:
            continue  # resuming inside the joint phase
        run_phase(phase, model, data, args, ctx)
    export(model, data, args, ctx)
    barrier(ctx.dist)
    return ctx.run_dir


def check_baseline_args(args) -> None:
    """Flag sanity checks that would otherwise fail deep inside a loader."""
    world = env_world_size()
    if args.batch_size % (args.num_instances * world):
        # --batch-size is the global batch: each torchrun process takes whole identities of it.
        need = (f"--num-instances {args.num_instances}" if world == 1 else
                f"--num-instances x processes ({args.num_instances} x {world}) so that every process gets "
                "whole pseudo-identities")
        raise DataError(f"--batch-size {args.batch_size} must be a multiple of {need}")
    if args.epochs < 1 or args.iters < 1:
        raise DataError("--epochs and --iters must be at least 1")
