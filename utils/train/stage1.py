"""Stage 1 (method.md A.2, D): intra-modality phase, joint phase, export of the hand-off artifact.

Each epoch: extract flip-averaged features -> Jaccard/DBSCAN per modality (and jointly in phase 2)
-> cluster memories -> ``--iters`` iterations -> evaluate every ``--eval-step`` -> checkpoints.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Dict

import numpy as np
import torch

from data.datasets import load_train
from data.sample import IR, RGB, DataError, pids_of
from data.specs import SPECS
from data.transforms import build_train_transforms
from model import build_model, to_channels_last
from utils.artifacts import save_artifact
from utils.train.stage1_steps import (build_memory, cluster_epoch, clustering_report, current_lr,
                                  memory_step, train_loader)
from utils.checkpoint import load_checkpoint, load_model_state, make_checkpoint, save_checkpoint
from utils.device import configure_backends, grad_scaler, optimizer_step, unwrap
from utils.distributed import (all_gather_rows, barrier, debug_dump,
                               decorrelate_rng, env_world_size, mean_over_ranks, run_on_main, state_digest,
                               sync_buffers, wrap_model)
from utils.evaluation.protocols import evaluate, format_results
from utils.evaluation.features import extract_features
from utils.run import Timer, prepare_run
from utils.runlog import append_metrics, restore_metrics

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


def ari_report(labels: Dict[str, np.ndarray], samples) -> Dict[str, float]:
    """Adjusted Rand index of the pseudo-labels against ground truth (diagnostics only)."""
    from sklearn.metrics import adjusted_rand_score

    gt = {m: pids_of(samples[m]) for m in (RGB, IR)}
    out = {f"ari_{m}": float(adjusted_rand_score(gt[m], labels[m])) for m in (RGB, IR)}
    if "joint" in labels:
        out["ari_joint"] = float(adjusted_rand_score(np.r_[gt[RGB], gt[IR]], labels["joint"]))
    return out


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


def selection_metric(results: Dict) -> float:
    """Model selection as released: mAP of the first protocol (SYSU all-search / RegDB v->t)."""
    return next(iter(results.values()))["mean"]["mAP"]


def train_epoch(model, optimizer, loaders, memories, args, ctx, joint: bool, scaler=None) -> Dict[str, float]:
    """``args.iters`` iterations; in the joint phase each iteration makes two optimizer steps
    (through ``scaler`` under ``--amp fp16``)."""
    from tqdm import tqdm

    model.train()
    iters = {k: iter(v) for k, v in loaders.items() if v is not None}
    sums: Dict[str, float] = {}
    bar = tqdm(range(args.iters), desc="train", leave=False, disable=not ctx.dist.is_main)
    for it in bar:
        steps = [("intra", memories["rgb"], memories["ir"])]
        if joint and memories.get("joint") is not None:
            steps.append(("joint", memories["joint"], memories["joint"]))
        for name, m_rgb, m_ir in steps:
            pre = "" if name == "intra" else "joint_"
            losses = memory_step(model, next(iters[pre + "rgb"]), next(iters[pre + "ir"]), m_rgb, m_ir, ctx.device,
                                 amp=args.amp)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss)} at iteration {it}")
            optimizer_step(loss, optimizer, scaler)
            for k, v in losses.items():
                sums[pre + k] = sums.get(pre + k, 0.0) + float(v.detach())
        if (it + 1) % args.print_freq == 0:
            bar.set_postfix({k: f"{v / (it + 1):.3f}" for k, v in sums.items()})
    # Each rank's loss is the mean over its slice; their average is the global-batch loss.
    return mean_over_ranks({k: v / args.iters for k, v in sums.items()}, ctx.dist)


def epoch_data(model, data, args, ctx, epoch: int, joint: bool, tag: str):
    """Features, pseudo-labels, memories and loaders of one epoch (clustering on rank 0 only).

    Memories or loaders are None where the clustering cannot support training this epoch.
    """
    feats = {m: extract_train(model, data[m], args, ctx, desc=f"features {m}") for m in (RGB, IR)}
    labels = run_on_main(lambda: cluster_epoch(feats, args, joint), ctx.dist)
    report = clustering_report(labels, len(data[RGB]))
    if args.report_ari:
        report.update(ari_report(labels, data))
    ctx.logger.info(f"{tag} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in report.items()))
    rgb_tf, ir_tf = data["transforms"]
    memories = {m: build_memory(feats[m], labels[m], args, ctx.device) for m in (RGB, IR)}
    debug_dump(f"stage1_{'joint' if joint else 'intra'}_e{epoch}_labels",
               {**labels, **{f"memory_{m}": memories[m].features for m in (RGB, IR) if memories[m] is not None}},
               ctx.dist)
    loaders = {m: train_loader(data[m], labels[m], tf, args, ctx, epoch, i)
               for i, (m, tf) in enumerate(((RGB, rgb_tf), (IR, ir_tf)))}
    if joint:
        n_rgb = len(data[RGB])
        modality = torch.cat([torch.zeros(n_rgb, dtype=torch.long), torch.ones(len(data[IR]), dtype=torch.long)])
        memories["joint"] = build_memory(torch.cat([feats[RGB], feats[IR]]), labels["joint"], args,
                                         ctx.device, modality=modality)
        # Only clusters holding both modalities feed the joint loaders (D.3 step 4).
        lab = labels["joint"].copy()
        both = np.intersect1d(lab[:n_rgb][lab[:n_rgb] >= 0], lab[n_rgb:][lab[n_rgb:] >= 0])
        lab[~np.isin(lab, both)] = -1
        loaders["joint_rgb"] = train_loader(data[RGB], lab[:n_rgb], rgb_tf, args, ctx, epoch, 2)
        loaders["joint_ir"] = train_loader(data[IR], lab[n_rgb:], ir_tf, args, ctx, epoch, 3)
        if memories["joint"] is None or loaders["joint_rgb"] is None or loaders["joint_ir"] is None:
            ctx.logger.warning(f"{tag} too few cross-modality clusters to fill a batch: the joint step is "
                               "skipped this epoch")
            memories["joint"] = None
    return memories, loaders, report


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


def phase_start(phase: str, model, optimizer, scheduler, ctx) -> (int, float):
    """Resume a phase from its last.pth, or start the joint phase from the intra phase's best model.

    Rank 0 reads the checkpoint and broadcasts it, so the other ranks need neither a shared file
    system nor a barrier to see the files rank 0 wrote.
    """
    src, ckpt = run_on_main(lambda: _phase_checkpoint(phase, ctx.run_dir), ctx.dist)
    if ckpt is None:
        return 0, -1.0
    load_model_state(model, ckpt, src)
    if ckpt["phase"] == phase:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ctx.dist.is_main and ckpt.get("metrics"):
            restore_metrics(ctx.run_dir, ckpt["metrics"])
        ctx.logger.info(f"resumed {phase} phase from {src}: epoch {ckpt['epoch']} was complete, "
                        f"continuing with epoch {ckpt['epoch'] + 1}")
        return ckpt["epoch"], ckpt.get("best_metric") or -1.0
    ctx.logger.info(f"joint phase starts from {src}")
    return 0, -1.0


def run_phase(phase: str, model, data, args, ctx) -> None:
    """One phase of stage 1: a fresh Adam + StepLR, ``args.epochs`` epochs, last/best checkpoints."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step_size, gamma=0.1)
    start, best = phase_start(phase, model, optimizer, scheduler, ctx)
    scaler = grad_scaler(args.amp, ctx.device)  # float16 only; its scale adapts within a few steps
    joint = phase == "joint"
    for epoch in range(start, args.epochs):
        timer = Timer()
        tag = f"[{phase} {epoch + 1}/{args.epochs}]"
        memories, loaders, report = epoch_data(model, data, args, ctx, epoch, joint, tag)
        lr = current_lr(optimizer)
        if any(x is None for x in (memories[RGB], memories[IR], loaders[RGB], loaders[IR])):
            ctx.logger.warning(f"{tag} too few clusters to train (rgb {report['rgb_clusters']}, ir "
                               f"{report['ir_clusters']} clusters; a batch needs {args.batch_size} images of "
                               f"pseudo-ids x {args.num_instances}): training skipped this epoch. If this "
                               "persists, change --eps or --batch-size, or check the data")
            losses = {}
        else:
            losses = train_epoch(model, optimizer, loaders, memories, args, ctx, joint, scaler)
        with warnings.catch_warnings():  # a skipped epoch made no optimizer step; the schedule still advances
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            scheduler.step()
        record = dict(phase=phase, epoch=epoch + 1, lr=lr, **report, **losses)  # epochs 1-based for people
        if joint:  # False when the joint step was skipped ("too few cross-modality clusters")
            record["joint_trained"] = "joint_loss_rgb" in losses
        due = args.eval_step > 0 and ((epoch + 1) % args.eval_step == 0 or epoch + 1 == args.epochs)
        is_best = False
        if due and ctx.dist.is_main:
            results = run_evaluation(model, args, ctx)
            record["eval"] = {k: v["mean"] for k, v in results.items()}
            metric = selection_metric(results)
            is_best = metric > best
            best = max(best, metric)
        record["seconds"] = timer()
        sync_buffers(model, ctx.dist)  # all ranks hold the state that rank 0 saves
        debug_dump(f"stage1_{phase}_e{epoch}_model", state_digest(model), ctx.dist)
        if ctx.dist.is_main:
            ckpt = make_checkpoint(model, stage="baseline", phase=phase, dataset=args.dataset, trial=args.trial,
                                   epoch=epoch + 1, args=vars(args), optimizer=optimizer, scheduler=scheduler,
                                   metrics=record, best_metric=best)
            save_checkpoint(ckpt, os.path.join(ctx.run_dir, phase, "last.pth"), ctx.dist)
            if is_best:  # weights only: resuming reads last.pth, so best.pth needs no optimizer state
                save_checkpoint(dict(ckpt, optimizer=None, scheduler=None),
                                os.path.join(ctx.run_dir, phase, "best.pth"), ctx.dist)
            append_metrics(ctx.run_dir, record)
        ctx.logger.info(f"[{phase} {epoch + 1}/{args.epochs}] lr {lr:.2e} " +
                        "  ".join(f"{k} {v:.3f}" for k, v in losses.items()) +
                        f"  {record['seconds']:.0f}s" + ("  (best)" if is_best else ""))
        barrier(ctx.dist)


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
    save_checkpoint(ckpt, os.path.join(ctx.run_dir, "final.pth"), ctx.dist)
    ctx.logger.info(f"stage-1 artifact {path} ({report['rgb_clusters']} rgb / {report['ir_clusters']} ir "
                    f"clusters); checkpoint for stage 2: {os.path.join(ctx.run_dir, 'final.pth')}")
    return path


def run_baseline(args) -> str:
    """The whole of stage 1; returns the run directory."""
    ctx = prepare_run(args, "baseline", last_checkpoint=os.path.join("intra", "last.pth"))
    configure_backends(ctx.device, args.amp)
    if run_on_main(lambda: os.path.exists(os.path.join(ctx.run_dir, "final.pth")), ctx.dist):
        ctx.logger.info(f"{ctx.run_dir} is complete (final.pth exists); nothing to do")
        return ctx.run_dir
    rgb, ir = load_train(args.dataset, args.data_dir, args.trial)
    ctx.logger.info(f"training images: {len(rgb)} rgb, {len(ir)} ir")
    data = {RGB: rgb, IR: ir, "transforms": build_train_transforms(args.img_h, args.img_w)}
    model = build_model(arch=args.arch, num_classes=0, pretrained=args.pretrained).to(ctx.device)
    if args.channels_last:
        to_channels_last(model)
    model = wrap_model(model, ctx.dist, ctx.device, sync_bn=args.sync_bn)
    decorrelate_rng(args.seed, ctx.dist)
    in_joint = run_on_main(lambda: os.path.exists(os.path.join(ctx.run_dir, "joint", "last.pth")), ctx.dist)
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
