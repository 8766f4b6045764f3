"""Stage 2 (method.md E, F): multi-memory learning and matching, then training with fixed labels.

:func:`run_mmm`: stage-1 checkpoint -> :func:`matching_step` (MMLM, once: visible labels rewritten
into the infrared label space) -> :func:`training_set` -> :func:`build_training` (stage-1 weights with
--init baseline, ImageNet with --init imagenet) -> per epoch (the first --warm-epochs train with hard
labels) :func:`clean_step` (clean probabilities) -> :func:`train_epoch` -> ``prototype_pass``
(prototypes) -> :func:`end_of_epoch` (evaluate, best Rank-1, checkpoints; utils/train/epoch_end.py).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import torch

from clustering.ari import matching_ari
from clustering.mmlm import multi_memory_matching
from data.datasets import load_train
from data.sample import IR, RGB, DataError, pids_of
from data.transforms import build_train_transforms
from memory.gmm import clean_probabilities
from model import build_model, describe_weights, to_channels_last
from model import param_groups_stage2
from utils.artifacts import align_to_samples, find_artifact, load_artifact, relative_paths
from utils.checkpoint import check_compatible, load_checkpoint, load_model_state
from utils.device import configure_backends, grad_scaler, optimizer_step, unwrap
from utils.distributed import decorrelate_rng, run_on_main, wrap_model
from utils.evaluation.protocols import evaluate, format_results
from utils.run import Timer, prepare_run
from utils.train.callbacks import OBSERVERS
from utils.train.divergence import DivergenceError, add_losses, diverged_at, fetch_sums, loss_is_finite
from utils.train.epoch_end import EpochEnd, finish_epoch, resume_from
from utils.train.stage2_steps import (batch_losses, forward_batch, full_pass, gather_outputs, identity_pass,
                                      loader, paired_dataset, per_sample_losses, prototype_pass, set_lr)


def match_clusters(args, ctx, rgb, ir) -> Dict[str, np.ndarray]:
    """Multi-memory learning and matching (E), on rank 0: stage-1 artifact -> MMLM -> the labels of every
    training sample, visible ones rewritten into the infrared label space; saved as mmlm_labels.npz.

    Returns:
        ``{"rgb": (N_rgb,), "ir": (N_ir,)}`` int64 labels, -1 = outlier.
    """
    path = args.baseline_artifact or find_artifact(args.resume_net1)
    art = load_artifact(path)
    meta = art["meta"]
    if meta.get("dataset", args.dataset) != args.dataset or meta.get("trial") != args.trial:
        raise DataError(f"{path} was made for dataset {meta.get('dataset')} trial {meta.get('trial')}, "
                        f"not --dataset {args.dataset} --trial {args.trial}")
    f_rgb, l_rgb = align_to_samples(art, RGB, rgb, args.data_dir)
    f_ir, l_ir = align_to_samples(art, IR, ir, args.data_dir)
    if (l_rgb >= 0).sum() == 0 or (l_ir >= 0).sum() == 0:
        raise DataError(f"{path}: stage 1 left a modality without any cluster; rerun stage 1 (more epochs, other --eps)")
    new_rgb, info = multi_memory_matching(f_rgb, l_rgb, f_ir, l_ir, num_memories=args.num_memories,
                                          matching=args.matching, cost=args.match_cost, seed=args.seed,
                                          device=ctx.device, return_info=True)
    ctx.logger.info(f"MMLM: {int(l_rgb.max()) + 1} rgb -> {int(l_ir.max()) + 1} ir clusters, "
                    f"{info['ir_unmatched']} ir clusters without an rgb partner, {info['rgb_shared']} rgb clusters sharing one, "
                    f"{info.get('seconds', 0):.2f}s")
    if args.report_ari:
        before = matching_ari(l_rgb, pids_of(rgb), l_ir, pids_of(ir))
        after = matching_ari(new_rgb, pids_of(rgb), l_ir, pids_of(ir))
        ctx.logger.info("ARI before matching " + "  ".join(f"{k[4:]} {v:.3f}" for k, v in before.items()) +
                        " | after " + "  ".join(f"{k[4:]} {v:.3f}" for k, v in after.items()))
    labels = {"rgb": new_rgb, "ir": l_ir}
    save_matched_labels(ctx.run_dir, args.data_dir, rgb, ir, labels)
    return labels


def save_matched_labels(run_dir: str, data_dir: str, rgb, ir, labels: Dict[str, np.ndarray]) -> str:
    """``<run_dir>/mmlm_labels.npz``: per modality the image paths (relative to --data-dir) and the stage-2
    labels after the matching (visible labels in the infrared label space, -1 = outlier), for inspection."""
    path = os.path.join(run_dir, "mmlm_labels.npz")
    np.savez(path, paths_rgb=np.array(relative_paths(rgb, data_dir)), labels_rgb=labels["rgb"],
             paths_ir=np.array(relative_paths(ir, data_dir)), labels_ir=labels["ir"])
    return path


def training_samples(args, ctx):
    """(rgb, ir) training samples, after checking that --batch-ids splits over the processes."""
    world = ctx.dist.world_size
    if args.batch_ids % world:
        raise DataError(f"--batch-ids {args.batch_ids} must be a multiple of the number of processes ({world}): "
                        "the batch is split across them by whole identities")
    return load_train(args.dataset, args.data_dir, args.trial)


def matching_step(args, ctx, rgb, ir) -> Dict[str, np.ndarray]:
    """:func:`match_clusters` on rank 0, its labels on every rank (observers hear of them)."""
    labels = run_on_main(lambda: match_clusters(args, ctx, rgb, ir), ctx.dist)
    if OBSERVERS:
        OBSERVERS.notify("labels", rank=ctx.dist.rank, stage="stage2", phase=None, epoch=None, values=lambda: labels)
    return labels


def training_set(rgb, ir, labels: Dict[str, np.ndarray], args, ctx) -> Dict:
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
    if len(shared) < args.batch_ids:
        other = "" if args.matching == "hungarian" else "try --matching hungarian, "
        raise DataError(f"the matching left only {len(shared)} infrared clusters with a visible partner, fewer "
                        f"than --batch-ids {args.batch_ids}: train stage 1 longer, {other}or lower --batch-ids")
    return data


def stage1_checkpoint(args, ctx) -> Dict:
    """The --resume_net1 checkpoint, checked before any work: a stage-1 checkpoint of this dataset,
    trial and --arch (its artifact is looked up next to it later)."""
    # Rank 0 reads and broadcasts: the other ranks need not see the file (multi-node without shared storage).
    ckpt = run_on_main(lambda: load_checkpoint(args.resume_net1, flag="--resume_net1"), ctx.dist)
    if ckpt.get("stage") != "baseline":
        raise DataError(f"--resume_net1 {args.resume_net1} is a stage-2 checkpoint; give the stage-1 one "
                        "(logs/<dataset>/baseline/final.pth)")
    check_compatible(ckpt, args.resume_net1, arch=args.arch, dataset=args.dataset, trial=args.trial)
    return ckpt


def build_stage2_model(args, ctx, num_classes: int, ckpt: Dict):
    """The network: stage-1 weights (--init baseline) or --pretrained backbone (--init imagenet)."""
    pretrained = args.pretrained if args.init == "imagenet" else "none"
    model = build_model(arch=args.arch, num_classes=num_classes, pretrained=pretrained)
    if args.init == "baseline":
        load_model_state(model, ckpt, args.resume_net1, skip_classifier=True)
    ctx.logger.info(f"backbone weights: {describe_weights(model)}"
                    + (" (through the stage-1 checkpoint)" if args.init == "baseline" else ""))
    return model.to(ctx.device)


def build_training(args, ctx, num_classes: int, stage1: Dict):
    """Model, SGD, prototypes (three (C, D) zero banks: "v1", "v2", "ir"), restored from last.pth with
    --resume; the model is then wrapped for the devices. Returns (model, optimizer, protos, start, best)."""
    model = build_stage2_model(args, ctx, num_classes, stage1)
    optimizer = torch.optim.SGD(param_groups_stage2(model, args.lr), lr=args.lr, momentum=0.9,
                                weight_decay=args.weight_decay, nesterov=True)
    protos = {k: torch.zeros(num_classes, unwrap(model).dim, device=ctx.device) for k in ("v1", "v2", "ir")}
    start, best = resume(model, optimizer, protos, args, ctx)
    if args.channels_last:
        to_channels_last(model)
    # One GPU without torchrun, as released: DataParallel would split the mixed batch and change
    # each stem's BatchNorm statistics.
    model = wrap_model(model, ctx.dist, ctx.device, sync_bn=args.sync_bn, data_parallel=False)
    if not ctx.dist.enabled and ctx.device.type == "cuda" and torch.cuda.device_count() > 1:
        ctx.logger.warning(f"stage 2 trains on one GPU ({ctx.device}) as released; use torchrun for several")
    decorrelate_rng(args.seed, ctx.dist)
    return model, optimizer, protos, start, best


def train_step(model, optimizer, batch, probs, protos, args, ctx, epoch: int, scaler=None,
               diverged=None) -> Dict[str, torch.Tensor]:
    """One optimizer step on a loader batch: forward, the loss of F.6 (warm-up, ``probs`` None: plain
    CE), the step's one host sync (is the loss finite? else raise ``diverged()``), backward and step
    (through ``scaler`` under ``--amp fp16``). Returns the named terms, detached, on the device."""
    # The losses see the global batch (triplet negatives come from every rank's identities).
    o = gather_outputs(forward_batch(model, batch, ctx.device, args.amp), ctx.dist)
    if probs is None:
        losses = {"id": torch.nn.functional.cross_entropy(o.logits, o.logit_labels())}
    else:
        losses = batch_losses(o, probs, protos, args, epoch)
    loss = sum(losses.values())
    if not loss_is_finite(loss, ctx.dist):
        raise diverged() if diverged is not None else DivergenceError("the loss became NaN or inf")
    # Gradient reaches only the local rows and DDP averages over ranks: scale back to the global gradient.
    optimizer_step(loss * ctx.dist.world_size if ctx.dist.enabled else loss, optimizer, scaler)
    return {k: v.detach() for k, v in losses.items()}


def train_epoch(model, optimizer, dataset, data, probs, protos, args, ctx, epoch: int,
                scaler=None) -> Dict[str, float]:
    """One pass of the cross-modal identity sampler, one :func:`train_step` per batch. Returns the mean of
    each loss over the pass (read from the device once per progress print).

    ``probs`` (None in the warm-up): clean probabilities ``{"v1": (N_rgb,), "v2": (N_rgb,), "ir": (N_ir,)}``;
    ``protos``: last epoch's prototypes, each (C, D).
    """
    from tqdm import tqdm

    warm = epoch < args.warm_epochs
    sampler = full_pass(data, args, ctx, epoch) if warm else identity_pass(data, args, ctx, epoch)
    diverged = diverged_at(f"stage 2, epoch {epoch + 1}/{args.epochs}", [os.path.join(ctx.run_dir, "last.pth")],
                           args.amp)
    model.train()
    sums: Dict[str, torch.Tensor] = {}
    bar = tqdm(loader(dataset, sampler, args, ctx.device), total=len(sampler),
               desc="warm-up" if warm else "train", leave=False, disable=not ctx.dist.is_main)
    for it, batch in enumerate(bar):
        add_losses(sums, train_step(model, optimizer, batch, None if warm else probs, protos, args, ctx, epoch,
                                    scaler, diverged))
        if (it + 1) % args.print_freq == 0 and ctx.dist.is_main:  # running means, as stage 1 shows them
            bar.set_postfix({k: f"{v / (it + 1):.3f}" for k, v in fetch_sums(sums).items()})
    return {f"loss_{k}": v / max(len(sampler), 1) for k, v in fetch_sums(sums).items()}


def clean_step(model, dataset, data, args, ctx, epoch: int) -> Dict[str, torch.Tensor]:
    """Clean probabilities (F.5 steps 1-3): per-sample losses of a full pass, then the Gaussian mixture
    (on rank 0, from the gathered losses). Returns ``{"v1": (N_rgb,), "v2": (N_rgb,), "ir": (N_ir,)}``
    float32 on the training device."""
    lv1, lv2, lir = per_sample_losses(model, dataset, full_pass(data, args, ctx, epoch + 10_000), args, ctx,
                                      len(data["rgb"]), len(data["ir"]))
    p = run_on_main(lambda: clean_probabilities(lv1, lv2, lir, seed=args.seed), ctx.dist)
    if OBSERVERS:
        OBSERVERS.notify("clean", rank=ctx.dist.rank, stage="stage2", phase=None, epoch=epoch + 1,
                         values=lambda: dict(zip(("v1", "v2", "ir"), p)))
    return {k: torch.as_tensor(v, dtype=torch.float32, device=ctx.device) for k, v in zip(("v1", "v2", "ir"), p)}


def clean_summary(probs: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Mean clean probability and share above 1/2 of each of ``{"v1": (N_rgb,), "v2": (N_rgb,), "ir":
    (N_ir,)}`` (metrics.jsonl ``clean_*``)."""
    out = {f"clean_{k}_mean": float(v.mean()) for k, v in probs.items()}
    out.update({f"clean_{k}_above_half": float((v > 0.5).float().mean()) for k, v in probs.items()})
    return out


def run_mmm(args) -> str:
    """The whole of stage 2 (returns the run directory): match the stage-1 clusters once (MMLM), then
    per epoch clean probabilities -> train -> prototypes (the first --warm-epochs train with hard labels)."""
    ctx = prepare_run(args, "mmm", last_checkpoint="last.pth")
    configure_backends(ctx.device, args.amp)
    stage1 = stage1_checkpoint(args, ctx)
    rgb, ir = training_samples(args, ctx)
    data = training_set(rgb, ir, matching_step(args, ctx, rgb, ir), args, ctx)
    model, optimizer, protos, start, best = build_training(args, ctx, data["num_classes"], stage1)
    scaler = grad_scaler(args.amp, ctx.device)  # float16 only
    dataset = paired_dataset(data, build_train_transforms(args.img_h, args.img_w), args, ctx.cache(args, "lanczos"))
    for epoch in range(start, args.epochs):
        timer, lr = Timer(), set_lr(optimizer, epoch, args.lr)
        record: Dict = {"epoch": epoch + 1, "lr": lr}  # epochs 1-based for people
        probs: Optional[Dict[str, torch.Tensor]] = None
        if epoch >= args.warm_epochs:
            probs = clean_step(model, dataset, data, args, ctx, epoch)
            record.update(clean_summary(probs))
        record.update(train_epoch(model, optimizer, dataset, data, probs, protos, args, ctx, epoch, scaler))
        if probs is not None:
            protos = prototype_pass(model, dataset, identity_pass(data, args, ctx, epoch), probs, protos, args, ctx)
        best = end_of_epoch(model, optimizer, protos, record, best, args, ctx, timer)
    return ctx.run_dir


def eval_options(args) -> Dict:
    """Keyword arguments of :func:`utils.evaluation.protocols.evaluate` for the per-epoch evaluation: the test
    protocol flags (--mode, --shot, --eval-trials, --flip, --amp) and the input size."""
    return dict(trial=args.trial, modes=(args.mode,), shot=args.shot, gallery_trials=args.eval_trials,
                directions=("visible2thermal",), img_h=args.img_h, img_w=args.img_w,
                batch_size=args.test_batch, workers=args.workers, flip=args.flip, amp=args.amp, progress=False)


def evaluation_due(epoch: int, eval_step: int, epochs: int) -> bool:
    """Whether stage 2 evaluates after 1-based ``epoch``: every ``eval_step`` epochs and after the last
    (0 = never). As released, the first epoch is not evaluated, so it can never be chosen as best,
    unless it is the last one."""
    if eval_step <= 0:
        return False
    return epoch == epochs or (epoch > 1 and epoch % eval_step == 0)


def run_evaluation(model, args, ctx, options: Dict) -> Dict:
    """The test protocol on the trial-0 gallery (as released); logs the MEAN lines."""
    results = evaluate(unwrap(model), args.dataset, args.data_dir, device=ctx.device,
                       cache=ctx.cache(args, "lanczos"), **options)
    for line in format_results(results):
        if "MEAN" in line:
            ctx.logger.info(line)
    return results


def end_of_epoch(model, optimizer, protos, record, best, args, ctx, timer) -> float:
    """Evaluate (when :func:`evaluation_due`), checkpoint with the prototypes ``{"v1", "v2", "ir"}``, each
    (C, D), log; returns the best Rank-1."""
    end = EpochEnd(stage="mmm", phase="train", folder=ctx.run_dir, tag="mmm", select="r1",
                   due=lambda epoch: evaluation_due(epoch, args.eval_step, args.epochs),
                   evaluate=lambda: run_evaluation(model, args, ctx, eval_options(args)),
                   shown=("loss_", "clean_"), lr_format=".4f", observed=("stage2", None))
    return finish_epoch(end, model, record, best, timer, args, ctx, optimizer,
                        extra={"prototypes": {k: v.cpu() for k, v in protos.items()}}, observed=protos)


def resume(model, optimizer, protos, args, ctx):
    """With --resume and an existing last.pth: restore model, optimizer and the prototypes (copied into
    ``protos``, each (C, D)); returns (start epoch, best Rank-1).

    Rank 0 reads the checkpoint and broadcasts it (no shared file system or barrier needed).
    """
    last = os.path.join(ctx.run_dir, "last.pth")
    ckpt = run_on_main(lambda: load_checkpoint(last) if args.resume and os.path.exists(last) else None, ctx.dist)
    if ckpt is None:
        return 0, -1.0
    for k, v in ckpt["extra"]["prototypes"].items():
        protos[k].copy_(v)
    return resume_from(ckpt, last, model, optimizer, ctx)
