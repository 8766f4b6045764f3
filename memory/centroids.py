"""Cluster centres used to (re)initialise the cluster memories.

Stage 1 rebuilds every memory bank from scratch each epoch (method D.2 step 4, D.3 step 3):

* intra-modality banks M_v, M_r: L2-normalised mean of each DBSCAN cluster's members
  (:func:`cluster_centroids`);
* the mixed bank M_all: for each joint cluster the average of its RGB-member mean and its
  IR-member mean (or the one available modality mean), then L2-normalised (:func:`mixed_centroids`).

Everything is vectorised with ``index_add_`` / ``bincount`` and runs on the device of the inputs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# Integer modality codes of the (N,) ``modality`` tensors (the data package's RGB / IR are the names "rgb" / "ir").
RGB_CODE = 0
IR_CODE = 1


def _valid_labels(labels: torch.Tensor, num_rows: int,
                  num_clusters: Optional[int]) -> Tuple[torch.Tensor, int]:
    """Check ``labels`` and return ``(mask of non-outliers, K)``; −1 marks an outlier."""
    if labels.dim() != 1 or labels.numel() != num_rows:
        raise ValueError(f"labels must have shape ({num_rows},), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if bool((labels < -1).any()):
        raise ValueError("labels must be >= -1 (-1 marks DBSCAN outliers)")
    keep = labels >= 0
    max_label = int(labels.max()) if labels.numel() else -1
    if num_clusters is None:
        num_clusters = max_label + 1
    elif max_label >= num_clusters:
        raise ValueError(f"label {max_label} out of range for num_clusters={num_clusters}")
    if num_clusters <= 0:
        raise ValueError("no clusters: every label is -1 (outlier) or the input is empty")
    return keep, num_clusters


def _masked_sums(features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                 num_clusters: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster feature sums (K, D) and member counts (K,) over the rows where ``mask`` holds."""
    idx = labels[mask].long()
    sums = features.new_zeros(num_clusters, features.shape[1])
    sums.index_add_(0, idx, features[mask])
    counts = torch.bincount(idx, minlength=num_clusters)
    return sums, counts


def _raise_if_empty(counts: torch.Tensor, what: str) -> None:
    """Raise a readable ValueError if some cluster id in 0..K-1 has no member."""
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        shown = empty[:10].tolist()
        more = "" if empty.numel() <= 10 else f" (and {empty.numel() - 10} more)"
        raise ValueError(f"{what}: cluster ids {shown}{more} have no members; "
                         "labels must be contiguous 0..K-1 (after removing -1)")


def _check_features(features: torch.Tensor) -> None:
    """Features must be a floating (N, D) tensor."""
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a floating (N, D) tensor, got {features.dtype} "
                         f"{tuple(features.shape)}")


@torch.no_grad()
def cluster_centroids(features: torch.Tensor, labels: torch.Tensor,
                      num_clusters: Optional[int] = None) -> torch.Tensor:
    """L2-normalised mean of each cluster (method D.2 step 4).

    c_k = m_k / ‖m_k‖,  m_k = (1/|S_k|) Σ_{i ∈ S_k} f_i,  S_k = {i : labels_i = k}.

    Args:
        features: (N, D) float descriptors (any device).
        labels: (N,) integer cluster ids in {−1, 0..K−1}; −1 (outlier) rows are ignored.
        num_clusters: K; defaults to ``labels.max() + 1``.

    Returns:
        (K, D) tensor on the device/dtype of ``features``.

    Raises:
        ValueError: bad shapes, labels out of range, no clusters, or a cluster id without members.
    """
    _check_features(features)
    keep, k = _valid_labels(labels, features.shape[0], num_clusters)
    sums, counts = _masked_sums(features, labels, keep, k)
    _raise_if_empty(counts, "cluster_centroids")
    # Normalising the sum equals normalising the mean; divide anyway so the intent is explicit.
    return F.normalize(sums / counts.unsqueeze(1).to(sums.dtype), dim=1)


def _check_modality(modality: torch.Tensor, labels: torch.Tensor) -> None:
    """Modality must be an (N,) tensor of RGB_CODE (0, rgb) / IR_CODE (1, ir) aligned with ``labels``."""
    if modality.shape != labels.shape:
        raise ValueError(f"modality shape {tuple(modality.shape)} != labels shape {tuple(labels.shape)}")
    if bool(((modality != RGB_CODE) & (modality != IR_CODE)).any()):
        raise ValueError("modality must contain only 0 (rgb) and 1 (ir)")


@torch.no_grad()
def mixed_centroids(features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor,
                    num_clusters: Optional[int] = None) -> torch.Tensor:
    """Modality-balanced centres of joint clusters (method D.3 step 3, mixed memory M_all).

    c_k = normalize( (m_k^rgb + m_k^ir) / 2 ) if cluster k has both modalities, else normalize(m_k^x)
    for its single modality x, where m_k^x is the plain mean of the cluster's members of modality x.
    Balancing stops the larger modality (usually RGB) from dominating the centre.

    Args:
        features: (N, D) float descriptors, RGB and IR rows in any order.
        labels: (N,) joint cluster ids in {−1, 0..K−1}; −1 rows are ignored.
        modality: (N,) RGB_CODE (0) for rgb rows, IR_CODE (1) for ir rows.
        num_clusters: K; defaults to ``labels.max() + 1``.

    Returns:
        (K, D) tensor on the device/dtype of ``features``.
    """
    _check_features(features)
    keep, k = _valid_labels(labels, features.shape[0], num_clusters)
    _check_modality(modality, labels)
    sum_rgb, n_rgb = _masked_sums(features, labels, keep & (modality == RGB_CODE), k)
    sum_ir, n_ir = _masked_sums(features, labels, keep & (modality == IR_CODE), k)
    _raise_if_empty(n_rgb + n_ir, "mixed_centroids")
    # clamp(min=1) only avoids 0/0 for an absent modality; its mean is discarded by the weights below.
    mean_rgb = sum_rgb / n_rgb.clamp(min=1).unsqueeze(1).to(features.dtype)
    mean_ir = sum_ir / n_ir.clamp(min=1).unsqueeze(1).to(features.dtype)
    has_rgb = (n_rgb > 0).to(features.dtype).unsqueeze(1)
    has_ir = (n_ir > 0).to(features.dtype).unsqueeze(1)
    # Average over the modalities that are present: (m_rgb + m_ir)/2, or the single one.
    centre = (has_rgb * mean_rgb + has_ir * mean_ir) / (has_rgb + has_ir)
    return F.normalize(centre, dim=1)


@torch.no_grad()
def cross_modal_mask(labels: torch.Tensor, modality: torch.Tensor,
                     num_clusters: Optional[int] = None) -> torch.Tensor:
    """Which joint clusters contain both modalities (method D.3 step 4).

    ``mask.float().mean()`` is the "associate rate" printed by the released code; only samples of
    such clusters enter the joint training lists.

    Args:
        labels: (N,) joint cluster ids in {−1, 0..K−1}; −1 rows are ignored.
        modality: (N,) RGB_CODE (0) for rgb rows, IR_CODE (1) for ir rows.
        num_clusters: K; defaults to ``labels.max() + 1``.

    Returns:
        (K,) bool tensor on the device of ``labels``.
    """
    keep, k = _valid_labels(labels, labels.numel(), num_clusters)
    _check_modality(modality, labels)
    n_rgb = torch.bincount(labels[keep & (modality == RGB_CODE)].long(), minlength=k)
    n_ir = torch.bincount(labels[keep & (modality == IR_CODE)].long(), minlength=k)
    return (n_rgb > 0) & (n_ir > 0)
