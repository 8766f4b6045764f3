"""Stage 2 (method.md E, F): multi-memory learning and matching, then training with fixed labels.

:func:`run_stage2`: stage-1 checkpoint -> :func:`matching_step` (MMLM, once: visible labels rewritten
into the infrared label space) -> :func:`training_set` -> :func:`start_training` (stage-1 weights with
--init baseline, ImageNet with --init imagenet) -> per epoch :func:`run_epoch` (the first --warm-epochs
train with hard labels): :func:`clean_step` (clean probabilities) -> :func:`train_pass` ->
``prototype_pass`` (prototypes) -> ``finish_epoch`` (evaluate, best Rank-1, checkpoints;
utils/train/epoch_end.py).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from clustering.ari import matching_ari
from clustering.mmlm import MatchOptions, multi_memory_matching
from data.datasets import load_train
from data.sample import IR, RGB, DataError, pids_of
from data.transforms import build_train_transforms
from memory.gmm import clean_probabilities
from model import param_groups_stage2
from utils.artifacts import align_to_samples, find_artifact, load_artifact, relative_paths
from utils.checkpoint import check_compatible, load_checkpoint
from utils.device import configure_backends, grad_scaler, unwrap
from utils.distributed import decorrelate_rng, run_on_main
from utils.run import Timer, prepare_run
from utils.settings import TEST_INTERPOLATION, Stage2Settings
from utils.train.callbacks import Observers
from utils.train.divergence import diverged_at
from utils.train.epoch_end import EpochEnd, TrainState, evaluate_run, finish_epoch, resume_from
from utils.train.loop import checked_step, train_epoch
from utils.train.network import build_network, place_network
from utils.train.stage2_steps import (batch_losses, forward_batch, full_pass, gather_outputs, identity_pass,
                                      loader, paired_dataset, per_sample_losses, prototype_pass, set_lr)


def match_clusters(settings: Stage2Settings, ctx, rgb, ir) -> Dict[str, np.ndarray]:
    """Multi-memory learning and matching (E), on rank 0: stage-1 artifact -> MMLM -> the labels of every
    training sample, visible ones rewritten into the infrared label space; saved as mmlm_labels.npz.

    Returns:
        ``{"rgb": (N_rgb,), "ir": (N_ir,)}`` int64 labels, -1 = outlier.
    """
    d, m = settings.data, settings.match
    path = settings.baseline_artifact or find_artifact(settings.resume_net1)
    art = load_artifact(path)
    meta = art["meta"]
    if meta.get("dataset", d.dataset) != d.dataset or meta.get("trial") != d.trial:
        raise DataError(f"{path} was made for dataset {meta.get('dataset')} trial {meta.get('trial')}, "
                        f"not --dataset {d.dataset} --trial {d.trial}")
    f_rgb, l_rgb = align_to_samples(art, RGB, rgb, d.data_dir)
    f_ir, l_ir = align_to_samples(art, IR, ir, d.data_dir)
    if (l_rgb >= 0).sum() == 0 or (l_ir >= 0).sum() == 0:
        raise DataError(f"{path}: stage 1 left a modality without any cluster; rerun stage 1 (more epochs, other --eps)")
    new_rgb, info = multi_memory_matching(f_rgb, l_rgb, f_ir, l_ir,
                                          MatchOptions(num_memories=m.num_memories, matching=m.matching,
                                                       cost=m.match_cost, seed=settings.schedule.seed),
                                          device=ctx.device, return_info=True)
    ctx.logger.info(f"MMLM: {int(l_rgb.max()) + 1} rgb -> {int(l_ir.max()) + 1} ir clusters, "
                    f"{info['ir_unmatched']} ir clusters without an rgb partner, {info['rgb_shared']} rgb clusters sharing one, "
                    f"{info.get('seconds', 0):.2f}s")
    if settings.schedule.report_ari:
        log_matching_ari(ctx, (l_rgb, new_rgb, pids_of(rgb)), (l_ir, pids_of(ir)))
    labels = {"rgb": new_rgb, "ir": l_ir}
    save_matched_labels(ctx.run_dir, d.data_dir, rgb, ir, labels)
    return labels


def log_matching_ari(ctx, rgb, ir) -> None:
    """--report-ari: the ARI of the visible labels against ground truth before and after the matching;
    ``rgb`` = (labels before (N_rgb,), labels after (N_rgb,), true ids (N_rgb,)), ``ir`` = (labels, ids)."""
    before = matching_ari(rgb[0], rgb[2], ir[0], ir[1])
    after = matching_ari(rgb[1], rgb[2], ir[0], ir[1])
    ctx.logger.info("ARI before matching " + "  ".join(f"{k[4:]} {v:.3f}" for k, v in before.items()) +
                    " | after " + "  ".join(f"{k[4:]} {v:.3f}" for k, v in after.items()))


def save_matched_labels(run_dir: str, data_dir: str, rgb, ir, labels: Dict[str, np.ndarray]) -> str:
    """``<run_dir>/mmlm_labels.npz``: per modality the image paths (relative to --data-dir) and the stage-2
    labels after the matching (visible labels in the infrared label space, -1 = outlier), for inspection."""
    path = os.path.join(run_dir, "mmlm_labels.npz")
    np.savez(path, paths_rgb=np.array(relative_paths(rgb, data_dir)), labels_rgb=labels["rgb"],
             paths_ir=np.array(relative_paths(ir, data_dir)), labels_ir=labels["ir"])
    return path


def matching_step(settings: Stage2Settings, ctx, rgb, ir) -> Dict[str, np.ndarray]:
    """:func:`match_clusters` on rank 0, its labels on every rank (observers hear of them)."""
    labels = run_on_main(lambda: match_clusters(settings, ctx, rgb, ir), ctx.dist)
    ctx.observers.notify("labels", rank=ctx.dist.rank, stage="stage2", phase=None, epoch=None, values=lambda: labels)
    return labels


def training_set(rgb, ir, labels: Dict[str, np.ndarray], settings: Stage2Settings, ctx) -> Dict:
    """Labelled samples of both modalities (outliers dropped); classes = infrared clusters.

    Returns ``{"rgb": [Sample], "ir": [Sample], "labels_rgb": (N_rgb,), "labels_ir": (N_ir,),
    "num_classes": C}``.
    """
    keep_rgb, keep_ir = labels["rgb"] >= 0, labels["ir"] >= 0
    data = {"rgb": [s for s, k in zip(rgb, keep_rgb) if k], "ir": [s for s, k in zip(ir, keep_ir) if k],
            "labels_rgb": labels["rgb"][keep_rgb], "labels_ir": labels["ir"][keep_ir]}
    data["num_classes"] = int(labels["ir"].max()) + 1
    shared = np.intersect1d(data["labels_rgb"], data["labels_ir"])
    ctx.logger.info(f"stage-2 training set: {len(data['rgb'])} rgb / {len(data['ir'])} ir images, "
                    f"{data['num_classes']} classes, {len(shared)} with both modalities (trained on)")
    batch_ids = settings.batches.batch_ids
    if len(shared) < batch_ids:
        other = "" if settings.match.matching == "hungarian" else "try --matching hungarian, "
        raise DataError(f"the matching left only {len(shared)} infrared clusters with a visible partner, fewer "
                        f"than --batch-ids {batch_ids}: train stage 1 longer, {other}or lower --batch-ids")
    return data


def stage1_checkpoint(settings: Stage2Settings, ctx) -> Dict:
    """The --resume_net1 checkpoint, checked before any work: a stage-1 checkpoint of this dataset,
    trial and --arch (its artifact is looked up next to it later)."""
    path = settings.resume_net1
    # Rank 0 reads and broadcasts: the other ranks need not see the file (multi-node without shared storage).
    ckpt = run_on_main(lambda: load_checkpoint(path, flag="--resume_net1"), ctx.dist)
    if ckpt.get("stage") != "baseline":
        raise DataError(f"--resume_net1 {path} is a stage-2 checkpoint; give the stage-1 one "
                        "(logs/<dataset>/baseline/final.pth)")
    check_compatible(ckpt, path, arch=settings.model.arch, dataset=settings.data.dataset, trial=settings.data.trial)
    return ckpt


def start_training(settings: Stage2Settings, ctx, num_classes: int, stage1: Dict) -> Tuple[TrainState, int, float]:
    """Everything stage 2 trains, ready for the first epoch: builds the model (stage-1 weights with --init
    baseline, --pretrained backbone with --init imagenet), SGD and the prototypes (three (C, D) zero banks:
    "v1", "v2", "ir"), restores them from last.pth with --resume, then wraps the model for the devices.
    Returns (state, first 0-based epoch, best Rank-1)."""
    baseline = settings.init == "baseline"
    # With --init baseline the backbone's own weights are replaced: no ImageNet file is read for them.
    model = build_network(settings.model, ctx.device, num_classes, pretrained="none" if baseline else None,
                          start=(stage1, settings.resume_net1) if baseline else None, log=ctx.logger.info)
    lr = settings.schedule.lr
    optimizer = torch.optim.SGD(param_groups_stage2(model, lr), lr=lr, momentum=0.9,
                                weight_decay=settings.schedule.weight_decay, nesterov=True)
    protos = {k: torch.zeros(num_classes, unwrap(model).dim, device=ctx.device) for k in ("v1", "v2", "ir")}
    state = TrainState(model, optimizer, protos=protos)
    start, best = resume(state, settings.run.resume, ctx)
    # One GPU without torchrun, as released: DataParallel would split the mixed batch and change
    # each stem's BatchNorm statistics.
    state.model = place_network(model, settings.model, ctx, data_parallel=False)
    if not ctx.dist.enabled and ctx.device.type == "cuda" and torch.cuda.device_count() > 1:
        ctx.logger.warning(f"stage 2 trains on one GPU ({ctx.device}) as released; use torchrun for several")
    decorrelate_rng(settings.schedule.seed, ctx.dist)
    return state, start, best


def batch_step(state: TrainState, probs, settings: Stage2Settings, ctx, epoch: int, scaler=None):
    """The step of one stage-2 batch (for :func:`utils.train.loop.train_epoch`): forward, the loss of F.6
    (warm-up, ``probs`` None: plain CE) on the global batch, then a checked optimizer step."""
    diverged = diverged_at(f"stage 2, epoch {epoch + 1}/{settings.schedule.epochs}",
                           [os.path.join(ctx.run_dir, "last.pth")], ctx.amp is not None)
    # Gradient reaches only the local rows and DDP averages over ranks: scale back to the global gradient.
    scale = ctx.dist.world_size if ctx.dist.enabled else None

    def step(batch) -> Dict[str, torch.Tensor]:
        # The losses see the global batch (triplet negatives come from every rank's identities).
        o = gather_outputs(forward_batch(state.model, batch, ctx.device, ctx.amp), ctx.dist)
        if probs is None:
            losses = {"id": torch.nn.functional.cross_entropy(o.logits, o.logit_labels())}
        else:
            losses = batch_losses(o, probs, state.protos, settings.loss, epoch)
        return checked_step(losses, state.optimizer, ctx, diverged, scaler, scale)
    return step


def train_pass(state: TrainState, dataset, data, probs, settings: Stage2Settings, ctx, epoch: int,
               scaler=None) -> Dict[str, float]:
    """One pass of the cross-modal identity sampler (the full-pass sampler in the warm-up, ``probs``
    None), one step per batch. Returns the mean of each loss over the pass (``loss_<term>``).

    ``probs``: clean probabilities ``{"v1": (N_rgb,), "v2": (N_rgb,), "ir": (N_ir,)}``.
    """
    warm = epoch < settings.batches.warm_epochs
    sampler = (full_pass if warm else identity_pass)(data, settings, ctx, epoch)
    means = train_epoch(batch_step(state, None if warm else probs, settings, ctx, epoch, scaler),
                        loader(dataset, sampler, ctx), state.model, ctx, settings.schedule.print_freq,
                        desc="warm-up" if warm else "train", total=len(sampler))
    return {f"loss_{k}": v for k, v in means.items()}


def clean_step(model, dataset, data, settings: Stage2Settings, ctx, epoch: int) -> Dict[str, torch.Tensor]:
    """Clean probabilities (F.5 steps 1-3): per-sample losses of a full pass, then the Gaussian mixture
    (on rank 0, from the gathered losses). Returns ``{"v1": (N_rgb,), "v2": (N_rgb,), "ir": (N_ir,)}``
    float32 on the training device."""
    lv1, lv2, lir = per_sample_losses(model, dataset, full_pass(data, settings, ctx, epoch + 10_000), ctx,
                                      len(data["rgb"]), len(data["ir"]))
    p = run_on_main(lambda: clean_probabilities(lv1, lv2, lir, seed=settings.schedule.seed), ctx.dist)
    ctx.observers.notify("clean", rank=ctx.dist.rank, stage="stage2", phase=None, epoch=epoch + 1,
                         values=lambda: dict(zip(("v1", "v2", "ir"), p)))
    return {k: torch.as_tensor(v, dtype=torch.float32, device=ctx.device) for k, v in zip(("v1", "v2", "ir"), p)}


def clean_summary(probs: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Mean clean probability and share above 1/2 of each of ``{"v1": (N_rgb,), "v2": (N_rgb,), "ir":
    (N_ir,)}`` (metrics.jsonl ``clean_*``)."""
    out = {f"clean_{k}_mean": float(v.mean()) for k, v in probs.items()}
    out.update({f"clean_{k}_above_half": float((v > 0.5).float().mean()) for k, v in probs.items()})
    return out


def run_epoch(state: TrainState, dataset, data, settings: Stage2Settings, ctx, epoch: int, scaler=None) -> Dict:
    """0-based ``epoch`` (the first --warm-epochs train with hard labels): clean probabilities -> train ->
    prototypes. Returns the epoch's metrics line, ``state.protos`` updated."""
    lr = set_lr(state.optimizer, epoch, settings.schedule.lr)
    record: Dict = {"epoch": epoch + 1, "lr": lr}  # epochs 1-based for people
    probs: Optional[Dict[str, torch.Tensor]] = None
    if epoch >= settings.batches.warm_epochs:
        probs = clean_step(state.model, dataset, data, settings, ctx, epoch)
        record.update(clean_summary(probs))
    record.update(train_pass(state, dataset, data, probs, settings, ctx, epoch, scaler))
    if probs is not None:
        state.protos = prototype_pass(state.model, dataset, identity_pass(data, settings, ctx, epoch), probs,
                                      state.protos, ctx)
    return record


def run_stage2(settings: Stage2Settings, observers: Optional[Observers] = None) -> str:
    """The whole of stage 2 (returns the run directory): match the stage-1 clusters once (MMLM), then
    per epoch clean probabilities -> train -> prototypes. ``observers`` hear of the training events."""
    ctx = prepare_run(settings, last_checkpoint="last.pth", observers=observers)
    configure_backends(ctx.device)
    stage1 = stage1_checkpoint(settings, ctx)
    d = settings.data
    rgb, ir = load_train(d.dataset, d.data_dir, d.trial)
    data = training_set(rgb, ir, matching_step(settings, ctx, rgb, ir), settings, ctx)
    state, start, best = start_training(settings, ctx, data["num_classes"], stage1)
    scaler = grad_scaler(ctx.amp, ctx.device)  # float16 only
    dataset = paired_dataset(data, build_train_transforms(d.img_h, d.img_w), d, ctx.cache(TEST_INTERPOLATION))
    end = EpochEnd(stage="mmm", phase="train", folder=ctx.run_dir, tag="mmm", select="r1",
                   epochs=settings.schedule.epochs, eval_step=settings.schedule.eval_step, first_evaluated=False,
                   evaluate=lambda: evaluate_run(state.model, settings.eval, ctx), shown=("loss_", "clean_"),
                   lr_format=".4f", observed=("stage2", None))
    for epoch in range(start, settings.schedule.epochs):
        timer = Timer()
        record = run_epoch(state, dataset, data, settings, ctx, epoch, scaler)
        best = finish_epoch(end, state, record, best, timer, ctx)
    return ctx.run_dir


def resume(state: TrainState, resume_flag: bool, ctx) -> Tuple[int, float]:
    """With --resume and an existing last.pth: restore the model, the optimizer and the prototypes
    (copied into ``state.protos``, each (C, D)); returns (start epoch, best Rank-1).

    Rank 0 reads the checkpoint and broadcasts it (no shared file system or barrier needed).
    """
    last = os.path.join(ctx.run_dir, "last.pth")
    ckpt = run_on_main(lambda: load_checkpoint(last) if resume_flag and os.path.exists(last) else None, ctx.dist)
    if ckpt is None:
        return 0, -1.0
    for k, v in ckpt["extra"]["prototypes"].items():
        state.protos[k].copy_(v)
    return resume_from(ckpt, last, state, ctx)
