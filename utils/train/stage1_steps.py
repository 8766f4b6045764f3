"""Stage-1 building blocks (method.md D.2-D.3): the clustering of an epoch and its report, the cluster
memories (:func:`memories_step`), the loaders (:func:`loaders_step`), whether the epoch can train
(:func:`trainable`) and one training iteration (:func:`memory_step`)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from clustering.dbscan import cluster_stats, pseudo_labels
from data.images import ImageDataset
from data.sample import IR, RGB, cams_of
from data.samplers import RandomMultipleGallerySampler, Shard
from memory.centroids import cluster_centroids, cross_modal_mask, mixed_centroids
from memory.cluster_memory import ClusterMemory
from model import input_memory_format
from utils.device import autocast, replica_order
from utils.distributed import batch_gather
from utils.settings import CLUSTER_INTERPOLATION, ClusterSettings, MemorySettings, Stage1Batches, Stage1Settings


def cluster_epoch(feats: Dict[str, torch.Tensor], cluster: ClusterSettings, joint: bool) -> Dict[str, np.ndarray]:
    """DBSCAN pseudo-labels of one epoch: per modality, plus the joint clustering in phase 2.

    Args:
        feats: ``{"rgb": (N_rgb, D), "ir": (N_ir, D)}`` flip-averaged descriptors.
    Returns:
        ``{"rgb": (N_rgb,), "ir": (N_ir,)[, "joint": (N_rgb + N_ir,)]}`` int64, -1 = outlier.
    """
    # The k-NN search runs where the features are: on the training GPU when they were extracted there.
    c = cluster
    labels = {m: pseudo_labels(feats[m], eps=c.eps, k1=c.k1, k2=c.k2, knn=c.knn, device=feats[m].device)
              for m in (RGB, IR)}
    if joint:
        both = torch.cat([feats[RGB], feats[IR]])
        modality = np.r_[np.zeros(len(feats[RGB]), np.int64), np.ones(len(feats[IR]), np.int64)]
        labels["joint"] = pseudo_labels(both, eps=c.eps, k1=c.k1_joint, k2=c.k2_joint, modality=modality,
                                        knn=c.knn, device=both.device)
    return labels


def clustering_report(labels: Dict[str, np.ndarray], n_rgb: int) -> Dict[str, float]:
    """Cluster and outlier counts per labelling, and the joint "associate rate" (the share of joint
    clusters that hold both modalities).

    Args:
        labels: ``{"rgb": (N_rgb,), "ir": (N_ir,)[, "joint": (N_rgb + N_ir,)]}``, -1 = outlier.
        n_rgb: N_rgb (the joint labels' first N_rgb rows are the rgb images).
    """
    rep = {}
    for key, lab in labels.items():
        stats = cluster_stats(lab)
        rep[f"{key}_clusters"], rep[f"{key}_outliers"] = stats["num_clusters"], stats["num_outliers"]
    if "joint" in labels and rep["joint_clusters"] > 0:
        both = cross_modal_mask(torch.as_tensor(labels["joint"]), _modality_vector(n_rgb, len(labels["joint"])))
        rep["joint_cross_modal_clusters"] = int(both.sum())
        rep["associate_rate"] = float(both.float().mean())
    return rep


def _modality_vector(n_rgb: int, n: int) -> torch.Tensor:
    """(n,) int64: 0 for the first ``n_rgb`` rows (rgb), 1 for the rest (ir)."""
    return torch.cat([torch.zeros(n_rgb, dtype=torch.long), torch.ones(n - n_rgb, dtype=torch.long)])


def build_memory(features: torch.Tensor, labels: np.ndarray, memory: MemorySettings, device,
                 modality: Optional[torch.Tensor] = None, gather=None) -> Optional[ClusterMemory]:
    """A cluster memory initialised with the (mixed) centroids, or None with fewer than 2 clusters.

    Args:
        features: (N, D) descriptors; labels: (N,) pseudo-labels, -1 = outlier.
        modality: (N,) 0 = rgb, 1 = ir: the mixed centroids of the joint phase (None: plain centroids).
        gather: how the memory gathers the batches of the processes training together (torchrun:
            utils/distributed.py ``batch_gather``; None: one process).
    Returns:
        a memory of K = max label + 1 unit centres (K, D) on ``device``, or None when K < 2.
    """
    lab = torch.as_tensor(labels).to(features.device)
    k = int(lab.max()) + 1 if len(lab) else 0
    if k < 2:
        return None
    cents = (cluster_centroids(features, lab, k) if modality is None
             else mixed_centroids(features, lab, modality.to(features.device), k))
    mem = ClusterMemory(features.shape[1], k, temp=memory.temp, momentum=memory.momentum,
                        use_hard=memory.use_hard, gather=gather).to(device)
    mem.set_centroids(cents.to(device))
    return mem


def pass_length(labels: np.ndarray, num_instances: int) -> int:
    """Images one sampler pass emits for (N,) pseudo-labels (-1 = outlier): ``num_instances`` per
    pseudo-id, 1 for a single-image id."""
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    counts = counts[counts > 0]
    return int(np.where(counts > 1, num_instances, 1).sum())


def train_loader(samples, labels: np.ndarray, transform, settings: Stage1Settings, ctx, epoch: int,
                 stream: int) -> Optional[DataLoader]:
    """Loader of ``--iters`` batches of P pseudo-ids x ``--num-instances`` images (D.2 step 5) over
    ``samples`` with their (N,) pseudo-labels (-1 = outlier, never sampled); ``stream`` seeds its sampler.

    Returns None when the clustered samples cannot fill one batch (the epoch's training is skipped).
    """
    b, d = settings.batches, settings.data
    if pass_length(labels, b.num_instances) < b.batch_size:
        return None
    sampler = RandomMultipleGallerySampler(
        labels, cams_of(samples), batch_size=b.batch_size, num_instances=b.num_instances,
        num_batches=b.iters, camera_aware=b.camera_aware, seed=settings.schedule.seed * 1000 + stream,
        shard=Shard(ctx.dist.rank, ctx.dist.world_size))
    sampler.set_epoch(epoch)
    ds = ImageDataset(samples, transform, labels=labels, h=d.img_h, w=d.img_w,
                      interpolation=CLUSTER_INTERPOLATION, cache=ctx.cache(CLUSTER_INTERPOLATION))
    # A new loader per epoch, not persistent workers: the labels change every epoch, and each new loader
    # seeds its workers' augmentation from the main RNG; persistent workers would continue their streams
    # and change the results (the price: the workers start once per epoch). Pinned batches let the copies
    # to the GPU overlap with compute (non_blocking in memory_step).
    return DataLoader(ds, batch_sampler=sampler, num_workers=d.workers,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=False)


def memory_step(model, rgb_batch, ir_batch, mem_rgb, mem_ir, device,
                amp: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """Losses of one iteration: NCE(M_rgb; both rgb views) + NCE(M_ir; ir) (method.md D.2 step 8, D.3 step 5).

    ``rgb_batch`` = ((view_a, view_b), labels, cams, idx) with views (B, 3, H, W) and labels (B,);
    ``ir_batch`` = (img (B', 3, H, W), labels (B',), cams, idx). Returns scalar ``loss_rgb`` (over the
    2B view rows) and ``loss_ir``.
    In the joint phase both memories are the mixed memory. ``amp`` (the autocast dtype or None) autocasts the
    network's forward only: its features are cast to float32 before the memories (their softmax, their
    update in backward) see them.
    """
    fmt = input_memory_format(model)
    # The labels stay where the loader made them (the CPU): each memory reads its update schedule from
    # them there and copies them to the device itself, without a host sync (memory/cluster_memory.py).
    (va, vb), y_rgb = rgb_batch[0], rgb_batch[1]
    t, y_ir = ir_batch[0].to(device, non_blocking=True, memory_format=fmt), ir_batch[1]
    # Copy the (pinned) views first and concatenate on the device: a CPU cat would copy unpinned.
    x_rgb = torch.cat([v.to(device, non_blocking=True, memory_format=fmt) for v in (va, vb)])
    with autocast(amp, device):
        feat = model(x_rgb=x_rgb, x_ir=t).feat
    feat = feat.float()
    order = replica_order(len(x_rgb), len(t), model)
    if order is not None:
        feat = feat[order.to(feat.device)]
    n = len(x_rgb)
    # The infrared loss is built first, as released: in the joint phase both calls share the mixed
    # memory, which updates in backward, so the call order decides which modality writes a row last.
    loss_ir = mem_ir(feat[n:], y_ir)
    return {"loss_rgb": mem_rgb(feat[:n], torch.cat([y_rgb, y_rgb])), "loss_ir": loss_ir}


def memories_step(feats, labels, memory: MemorySettings, ctx, joint: bool) -> Dict[str, Optional[ClusterMemory]]:
    """Step 2 (D.2 step 4, D.3 step 3): one cluster memory per modality initialised with its centroids,
    and in the joint phase the mixed memory of the joint clusters; None where fewer than 2 clusters.

    ``feats``: ``{"rgb": (N_rgb, D), "ir": (N_ir, D)}``; ``labels`` as :func:`cluster_epoch` returns them.
    Returns ``{"rgb", "ir"[, "joint"]}`` memories of (K, D) unit centres.
    """
    gather = batch_gather(ctx.dist)
    memories = {m: build_memory(feats[m], labels[m], memory, ctx.device, gather=gather) for m in (RGB, IR)}
    if joint:
        modality = _modality_vector(len(feats[RGB]), len(feats[RGB]) + len(feats[IR]))
        memories["joint"] = build_memory(torch.cat([feats[RGB], feats[IR]]), labels["joint"], memory, ctx.device,
                                         modality=modality, gather=gather)
    return memories


def loaders_step(data, labels, settings: Stage1Settings, ctx, epoch: int, joint: bool) -> Dict[str, Optional[DataLoader]]:
    """Step 3 (D.2 step 5): the loaders of P pseudo-ids x K images per modality; in the joint phase also
    the joint loaders, fed only by clusters that hold both modalities (D.3 step 4). None where the
    clustered images cannot fill a batch."""
    rgb_tf, ir_tf = data["transforms"]
    loaders = {m: train_loader(data[m], labels[m], tf, settings, ctx, epoch, i)
               for i, (m, tf) in enumerate(((RGB, rgb_tf), (IR, ir_tf)))}
    if joint:
        n_rgb, lab = len(data[RGB]), labels["joint"].copy()
        both = np.intersect1d(lab[:n_rgb][lab[:n_rgb] >= 0], lab[n_rgb:][lab[n_rgb:] >= 0])
        lab[~np.isin(lab, both)] = -1
        loaders["joint_rgb"] = train_loader(data[RGB], lab[:n_rgb], rgb_tf, settings, ctx, epoch, 2)
        loaders["joint_ir"] = train_loader(data[IR], lab[n_rgb:], ir_tf, settings, ctx, epoch, 3)
    return loaders


def trainable(memories, loaders, report, batches: Stage1Batches, ctx, joint: bool, tag: str) -> bool:
    """Whether this epoch's clustering supports training; warns (and drops the joint step when it alone
    cannot run) otherwise."""
    if joint and (memories["joint"] is None or loaders["joint_rgb"] is None or loaders["joint_ir"] is None):
        ctx.logger.warning(f"{tag} too few cross-modality clusters to fill a batch: the joint step is "
                           "skipped this epoch")
        memories["joint"] = None
    if any(x is None for x in (memories[RGB], memories[IR], loaders[RGB], loaders[IR])):
        ctx.logger.warning(f"{tag} too few clusters to train (rgb {report['rgb_clusters']}, ir "
                           f"{report['ir_clusters']} clusters; a batch needs {batches.batch_size} images of "
                           f"pseudo-ids x {batches.num_instances}): training skipped this epoch. If this "
                           "persists, change --eps or --batch-size, or check the data")
        return False
    return True


def current_lr(optimizer) -> float:
    """Learning rate of the first parameter group."""
    return float(optimizer.param_groups[0]["lr"])
