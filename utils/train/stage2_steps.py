"""Stage-2 building blocks (method.md F): pseudo-labels from MMLM, loaders, the three passes."""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data.images import ImageDataset, PairedDataset
from data.samplers import CrossModalIdentitySampler, FullPassSampler
from memory.prototypes import PrototypeAccumulator
from model.losses import ViewInputs, batch_hard_triplet, intra_modality_loss, inter_modality_loss, soft_id_loss
from model import input_memory_format
from utils.device import autocast, replica_order
from utils.distributed import gather_keep_grad, sum_over_ranks_
from utils.settings import TEST_INTERPOLATION, DataSettings, LossSettings, Stage2Settings


def stage2_lr(epoch: int, base: float) -> float:
    """Released schedule (F.4): linear warm-up over 10 epochs, then /10 at 20 and 40."""
    if epoch < 10:
        return base * (epoch + 1) / 10
    return base * (1.0 if epoch < 20 else 0.1 if epoch < 40 else 0.01)


def set_lr(optimizer, epoch: int, base: float) -> float:
    """Apply :func:`stage2_lr`; group 0 (backbone) runs at a tenth of it. Returns the base rate."""
    lr = stage2_lr(epoch, base)
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr * (0.1 if i == 0 else 1.0)
    return lr


def paired_dataset(data, transforms, images: DataSettings, cache) -> PairedDataset:
    """(rgb two views, ir) pairs over the labelled training samples (lanczos pre-resize, F.2), at the
    input size of ``images``; ``cache``: the matching pre-resized image cache or None."""
    rgb_tf, ir_tf = transforms
    kw = dict(h=images.img_h, w=images.img_w, interpolation=TEST_INTERPOLATION, cache=cache)
    return PairedDataset(ImageDataset(data["rgb"], rgb_tf, labels=data["labels_rgb"], **kw),
                         ImageDataset(data["ir"], ir_tf, labels=data["labels_ir"], **kw))


class _CurrentBatches:
    """Batch sampler of a persistent DataLoader: iterates whichever sampler :func:`loader` set last.

    Samplers run in the main process, so swapping this object's ``sampler`` between passes is seen by
    the next ``iter(loader)`` while the worker processes (and their open files) stay alive.
    """

    def __init__(self):
        self.sampler = None

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def loader(dataset, sampler, ctx) -> DataLoader:
    """DataLoader over a batch sampler of (i_rgb, i_ir) pairs.

    With workers, one DataLoader per dataset is kept (``dataset.feed``) with persistent workers: stage 2
    makes three passes per epoch over the same dataset, and restarting the workers for each would cost
    their start-up every pass. Batches are pinned on CUDA for asynchronous copies.
    """
    workers = ctx.data.workers
    kw = dict(num_workers=workers, pin_memory=ctx.device.type == "cuda")
    if workers == 0:
        return DataLoader(dataset, batch_sampler=sampler, **kw)
    if getattr(dataset, "feed", None) is None:
        batches = _CurrentBatches()
        dataset.feed = (DataLoader(dataset, batch_sampler=batches, persistent_workers=True, **kw), batches)
    dataset.feed[1].sampler = sampler
    return dataset.feed[0]


def full_pass(data, settings: Stage2Settings, ctx, epoch: int) -> FullPassSampler:
    """Sampler of the warm-up and clean-probability passes: batch_ids x num_pos unrelated pairs per batch."""
    b = settings.batches
    s = FullPassSampler(len(data["rgb"]), len(data["ir"]), batch_size=b.batch_ids * b.num_pos,
                        seed=settings.schedule.seed, rank=ctx.dist.rank, world_size=ctx.dist.world_size)
    s.set_epoch(epoch)
    return s


def identity_pass(data, settings: Stage2Settings, ctx, epoch: int) -> CrossModalIdentitySampler:
    """Sampler of the training and prototype passes: batch_ids x num_pos per modality."""
    b = settings.batches
    s = CrossModalIdentitySampler(data["labels_rgb"], data["labels_ir"], batch_ids=b.batch_ids,
                                  num_pos=b.num_pos, seed=settings.schedule.seed + 7, rank=ctx.dist.rank,
                                  world_size=ctx.dist.world_size)
    s.set_epoch(epoch)
    return s


class Stage2Batch(NamedTuple):
    """Outputs of one mixed forward of (view 1, view 2, ir) over B (rgb, ir) pairs, float32.

    Attributes:
        rgb1: (B, D) pooled features of the first augmented view of the rgb images.
        rgb2: (B, D) pooled features of the second view.
        ir: (B, D) pooled features of the ir images.
        logits: (3B, C) classifier logits of the rows [rgb1; rgb2; ir].
        labels_rgb: (B,) int64 class (ir cluster) of each rgb image.
        labels_ir: (B,) int64 class of each ir image.
        index_rgb: (B,) int64 row of each rgb image in the training set (clean probabilities).
        index_ir: (B,) int64 row of each ir image.
    """

    rgb1: torch.Tensor
    rgb2: torch.Tensor
    ir: torch.Tensor
    logits: torch.Tensor
    labels_rgb: torch.Tensor
    labels_ir: torch.Tensor
    index_rgb: torch.Tensor
    index_ir: torch.Tensor

    def logit_labels(self) -> torch.Tensor:
        """(3B,) labels of the logits rows: [labels_rgb; labels_rgb; labels_ir]."""
        return torch.cat([self.labels_rgb, self.labels_rgb, self.labels_ir])


def forward_batch(model, batch, device, amp: Optional[torch.dtype] = None) -> Stage2Batch:
    """One mixed forward of a loader batch ((view1, view2), labels, cams, idx, ir, labels, cams, idx):
    views and ir images (B, 3, H, W), labels and indices (B,).

    ``amp`` (the autocast dtype or None) autocasts the network only; features and logits come back float32, so
    the losses, the prototypes and the clean-probability losses are computed in float32.
    """
    (v1, v2), y, _, i_rgb, t, z, _, i_ir = batch
    fmt = input_memory_format(model)
    x_rgb = torch.cat([v.to(device, non_blocking=True, memory_format=fmt) for v in (v1, v2)])
    with autocast(amp, device):
        out = model(x_rgb=x_rgb, x_ir=t.to(device, non_blocking=True, memory_format=fmt))
    pool, logits = out.pool.float(), out.logits.float()
    order = replica_order(len(x_rgb), len(t), model)
    if order is not None:
        pool, logits = pool[order.to(pool.device)], logits[order.to(pool.device)]
    n = len(v1)
    # non_blocking: a blocking copy to a GPU waits for the whole stream (a host sync per tensor).
    y, z, i_rgb, i_ir = (v.to(device, non_blocking=True) for v in (y, z, i_rgb, i_ir))
    return Stage2Batch(rgb1=pool[:n], rgb2=pool[n:2 * n], ir=pool[2 * n:], logits=logits, labels_rgb=y,
                       labels_ir=z, index_rgb=i_rgb, index_ir=i_ir)


def gather_outputs(o: Stage2Batch, dist) -> Stage2Batch:
    """:func:`forward_batch` outputs of the global batch under torchrun (rank order = the
    single-process batch: B becomes world_size x B); only this rank's rows carry gradients (see
    ``gather_keep_grad``)."""
    if not dist.enabled:
        return o
    out = {k: gather_keep_grad(v, dist) for k, v in o._asdict().items() if k != "logits"}
    # logits are [view1; view2; ir] rows: gather each block so the global order stays the same.
    n = len(o.rgb1)
    blocks = (o.logits[:n], o.logits[n:2 * n], o.logits[2 * n:])
    return Stage2Batch(logits=torch.cat([gather_keep_grad(x, dist) for x in blocks]), **out)


def batch_losses(o: Stage2Batch, probs, protos, loss: LossSettings, epoch: int) -> Dict[str, torch.Tensor]:
    """L = L_id + L_tri + lambda_intra L_intra + lambda_inter L_inter (F.6), each term named (scalars).

    ``probs``: clean probabilities ``{"v1": (N_rgb,), "v2": (N_rgb,), "ir": (N_ir,)}``; ``protos``: last
    epoch's prototypes ``{"v1", "v2", "ir"}``, each (C, D).
    """
    y3 = o.logit_labels()
    pa, pb, pt = probs["v1"][o.index_rgb], probs["v2"][o.index_rgb], probs["ir"][o.index_ir]
    weights = torch.cat([pa, pb, pt]) if loss.id_loss == "soft" else None
    losses = {"id": soft_id_loss(o.logits, y3, weights),
              "tri": batch_hard_triplet(torch.cat([o.rgb1, o.rgb2, o.ir]), y3, margin=loss.margin)}
    if loss.intra_weight > 0:
        losses["intra"] = loss.intra_weight * intra_modality_loss(
            ViewInputs(o.rgb1, o.labels_rgb, protos["v1"], pa), ViewInputs(o.rgb2, o.labels_rgb, protos["v2"], pb),
            ViewInputs(o.ir, o.labels_ir, protos["ir"], pt), kind=loss.intra_loss)
    if loss.inter_weight > 0 and epoch >= loss.inter_start_epoch:
        losses["inter"] = loss.inter_weight * inter_modality_loss(o.rgb1, o.rgb2, o.ir, o.labels_rgb, o.labels_ir)
    return losses


def scatter_last_(target: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``target[index[j]] = values[j]`` in place, where a repeated index keeps its LAST value (largest j).

    ``target[index] = values`` leaves the winner among repeats undefined on CUDA (parallel writes);
    here each row first picks the position of its last occurrence (``scatter_reduce`` "amax" over
    positions, an exact integer maximum), then takes that value: deterministic on every device, and
    without a host sync. target (N,), index (B,) int64 in 0..N-1, values (B,). Returns ``target``.
    """
    if index.numel() == 0:
        return target
    pos = torch.arange(len(index), device=index.device)
    last = torch.full_like(target, -1, dtype=torch.long).scatter_reduce_(0, index, pos, reduce="amax")
    target.copy_(torch.where(last >= 0, values[last.clamp(min=0)].to(target.dtype), target))
    return target


@torch.no_grad()
def per_sample_losses(model, dataset, sampler, ctx, n_rgb: int, n_ir: int) -> Tuple[np.ndarray, ...]:
    """Clean-probability pass (F.5 step 1): per-sample CE of view1, view2 and ir, last visit wins.

    Runs in train mode under no_grad, as released (BatchNorm running statistics are updated).
    Returns three float arrays (N_rgb,), (N_rgb,), (N_ir,) (gathered over ranks under torchrun).
    """
    from utils.distributed import all_gather_rows

    model.train()
    dev = ctx.device
    loss = {k: torch.full((n,), -1.0, device=dev) for k, n in (("v1", n_rgb), ("v2", n_rgb), ("ir", n_ir))}
    for batch in loader(dataset, sampler, ctx):
        o = forward_batch(model, batch, dev, ctx.amp)
        n = len(o.rgb1)
        ce = F.cross_entropy(o.logits, o.logit_labels(), reduction="none")
        rows = {"v1": (o.index_rgb, ce[:n]), "v2": (o.index_rgb, ce[n:2 * n]), "ir": (o.index_ir, ce[2 * n:])}
        for key, (idx, val) in rows.items():
            if ctx.dist.enabled:  # every rank needs every rank's visits
                idx = all_gather_rows(idx, ctx.dist, len(idx) * ctx.dist.world_size)
                val = all_gather_rows(val, ctx.dist, len(val) * ctx.dist.world_size)
            scatter_last_(loss[key], idx, val)
    return tuple(loss[k].cpu().numpy() for k in ("v1", "v2", "ir"))


@torch.no_grad()
def prototype_pass(model, dataset, sampler, probs, old, ctx) -> Dict[str, torch.Tensor]:
    """Prototype refresh (F.5 step 4): Σ p·f / count per class over a pass of the training batches.

    ``probs``: clean probabilities ``{"v1": (N_rgb,), "v2": (N_rgb,), "ir": (N_ir,)}``; ``old``: the
    prototypes ``{"v1", "v2", "ir"}``, each (C, D), kept for classes the pass never saw. Returns the new
    ones, each (C, D) (summed over ranks under torchrun).
    """
    model.train()
    dev = ctx.device
    acc = {k: PrototypeAccumulator(old[k].shape[0], old[k].shape[1], device=dev) for k in old}
    for batch in loader(dataset, sampler, ctx):
        o = forward_batch(model, batch, dev, ctx.amp)
        acc["v1"].add(o.rgb1.float(), o.labels_rgb, probs["v1"][o.index_rgb])
        acc["v2"].add(o.rgb2.float(), o.labels_rgb, probs["v2"][o.index_rgb])
        acc["ir"].add(o.ir.float(), o.labels_ir, probs["ir"][o.index_ir])
    sum_over_ranks_([t for a in acc.values() for t in (a.sums, a.counts)], ctx.dist)
    return {k: acc[k].result(old[k]) for k in old}
