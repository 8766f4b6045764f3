"""MMLM: multi-memory learning and matching (method E), run once between stage 1 and stage 2.

1. Multi-memory learning (E.1): every DBSCAN cluster of each modality is split by k-means into
   ``num_memories`` sub-clusters; their centres are the cluster's memories
   (:func:`cluster_memories`, batched over all clusters by :func:`clustering.kmeans.batched_kmeans`).
2. Multi-memory matching (E.2): a memory-to-memory cost between visible and infrared clusters and a
   greedy (released) or Hungarian (paper) matching give every visible cluster an infrared partner;
   visible samples take the partner's infrared label (:func:`multi_memory_matching`).

Differences from the released mmlm.py (documented choices):

* every cluster takes part; the release loops over ids 0..K−2 and skips the largest label of each
  modality (its RGB samples keep a stale id, its IR cluster can never be a partner);
* clusters with fewer members than memories use their members cycled to fill the memory rows (the
  release used the member mean as one row and then broadcast it inside the 4×4 distance loops);
* the greedy search has no start threshold of 20 (it never binds for ~unit-norm features);
* labels need not be contiguous: memories are built for the distinct non-negative label values in
  increasing order and the visible samples receive the partner's *value* of the infrared label.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .kmeans import batched_kmeans
from .matching import assign, cost_matrix

ArrayLike = Union[np.ndarray, torch.Tensor]


def _to_tensor(x: ArrayLike, device: Optional[Union[str, torch.device]]) -> torch.Tensor:
    """Tensor on ``device`` (default: the input's own device, CPU for numpy)."""
    t = torch.as_tensor(x)
    return t if device is None else t.to(device)


def cluster_memories(features: ArrayLike, labels: ArrayLike, num_memories: int = 4, seed: int = 0,
                     n_init: int = 10, device: Optional[Union[str, torch.device]] = None
                     ) -> Tuple[torch.Tensor, np.ndarray]:
    """k-means memories of every cluster (method E.1, all clusters, no off-by-one skip).

    features (N, D); labels (N,) with −1 = outlier, any non-negative values.
    Returns memories (K, num_memories, D) on ``device`` (features' dtype; k-means centres of each
    cluster's members, sklearn KMeans(num_memories, n_init, random_state=seed) semantics; clusters
    smaller than num_memories repeat their members) and cluster_ids (K,) int64, the distinct label
    values in increasing order (row k of memories belongs to label cluster_ids[k]).
    """
    x = _to_tensor(features, device)
    if not x.is_floating_point():
        x = x.float()
    lab = torch.as_tensor(labels, device=x.device).long()
    if x.dim() != 2 or lab.shape != (x.shape[0],):
        raise ValueError(f"features must be (N, D) and labels (N,), got {tuple(x.shape)}, {tuple(lab.shape)}")
    if bool((lab < -1).any()):
        raise ValueError("labels must be >= -1 (-1 marks outliers)")
    ids, groups = torch.unique(lab, sorted=True, return_inverse=True)
    if ids.numel() and int(ids[0]) == -1:         # outliers: group −1, ignored by batched_kmeans
        ids, groups = ids[1:], groups - 1
    if ids.numel() == 0:
        return x.new_zeros(0, num_memories, x.shape[1]), np.zeros(0, dtype=np.int64)
    memories, _ = batched_kmeans(x, groups, k=num_memories, n_init=n_init, seed=seed)
    return memories, ids.cpu().numpy().astype(np.int64)


def _relabel(labels_rgb: np.ndarray, ids_rgb: np.ndarray, ids_ir: np.ndarray,
             partner: np.ndarray) -> np.ndarray:
    """Visible sample of cluster ids_rgb[v] -> label ids_ir[partner[v]] (−1 stays −1, and −1 when
    the cluster has no partner).  Vectorised with searchsorted on the sorted ids."""
    out = np.full(labels_rgb.shape, -1, dtype=np.int64)
    keep = labels_rgb >= 0
    if not keep.any() or len(ids_ir) == 0:
        return out
    v = np.searchsorted(ids_rgb, labels_rgb[keep])
    new = ids_ir[np.maximum(partner, 0)]
    out[keep] = np.where(partner[v] >= 0, new[v], -1)
    return out


@dataclass(frozen=True)
class MatchOptions:
    """Options of :func:`multi_memory_matching` (defaults: the released code).

    Attributes:
        num_memories: k-means memories per cluster (``--num-memories``, 4 released).
        matching: "greedy" (released) or "hungarian" (paper), see :func:`clustering.matching.assign`.
        cost: memory-to-memory cost "ir2rgb" (released) or "rgb2ir", see :func:`clustering.matching.cost_matrix`.
        seed: k-means ``random_state`` of every cluster.
        n_init: k-means restarts per cluster (10, sklearn's default).
    """

    num_memories: int = 4
    matching: str = "greedy"
    cost: str = "ir2rgb"
    seed: int = 0
    n_init: int = 10


def multi_memory_matching(features_rgb: ArrayLike, labels_rgb: ArrayLike, features_ir: ArrayLike,
                          labels_ir: ArrayLike, options: MatchOptions = MatchOptions(),
                          device: Optional[Union[str, torch.device]] = None, return_info: bool = False):
    """MMLM label transfer (method E): new visible labels in the infrared label space.

    features_* (N_*, D), labels_* (N_*,) with −1 = outlier.  Every visible cluster v gets partner
    r*(v) = match(C)[v] with C = cost_matrix(memories_rgb, memories_ir, cost) (see
    :mod:`clustering.matching`); each visible sample of v receives the infrared label value of r*(v);
    outliers stay −1.  Infrared labels are unchanged and not returned.  ``options``: :class:`MatchOptions`.
    Returns labels (N_rgb,) int64 numpy, or (labels, info) with ``return_info=True``; info holds
    ``partner`` (K_rgb,) partner index, ``cluster_ids_rgb`` / ``cluster_ids_ir``, ``cost`` summary
    (min/mean/max of C and of the chosen costs), ``ir_unmatched`` (IR clusters no visible cluster
    chose), ``rgb_shared`` (visible clusters whose partner is shared with another) and ``seconds``.
    """
    t0 = time.perf_counter()
    o = options
    mem_v, ids_v = cluster_memories(features_rgb, labels_rgb, o.num_memories, o.seed, o.n_init, device)
    mem_r, ids_r = cluster_memories(features_ir, labels_ir, o.num_memories, o.seed, o.n_init, device)
    c = cost_matrix(mem_v, mem_r.to(mem_v.device), cost=o.cost)
    partner = assign(c, o.matching)
    lab_v = torch.as_tensor(labels_rgb).cpu().numpy().astype(np.int64)
    new = _relabel(lab_v, ids_v, ids_r, partner)
    if not return_info:
        return new
    seconds = time.perf_counter() - t0
    cn = c.detach().cpu().double().numpy()
    used = partner[partner >= 0]
    counts = np.bincount(used, minlength=len(ids_r))
    chosen = cn[np.nonzero(partner >= 0)[0], used]
    summary = {}
    for tag, arr in (("all", cn), ("chosen", chosen)):
        for stat in ("min", "mean", "max"):
            summary[f"{tag}_{stat}"] = float(getattr(np, stat)(arr)) if arr.size else float("nan")
    info = dict(partner=partner, cluster_ids_rgb=ids_v, cluster_ids_ir=ids_r, cost=summary,
                ir_unmatched=int((counts == 0).sum()), rgb_shared=int((counts[used] > 1).sum()),
                num_clusters_rgb=len(ids_v), num_clusters_ir=len(ids_r), seconds=seconds)
    return new, info

