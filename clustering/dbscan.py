"""DBSCAN pseudo-labels on the k-reciprocal Jaccard distance (method.md D.2 step 3, D.3 step 2, D.4).

The released code runs sklearn's DBSCAN(metric="precomputed") on the dense N×N Jaccard matrix. Here DBSCAN
gets a sparse CSR matrix holding only the pairs with d <= eps (plus every diagonal entry). sklearn treats
the stored entries of a sparse precomputed matrix — explicit zeros included — as candidate neighbours
(kept when d <= eps) and absent entries as non-neighbours; absent pairs have d = 1 > eps, so the
eps-neighbourhoods, hence the labels, are exactly those of the dense matrix (tests/test_dbscan.py checks
this). Pairs with eps < d < 1 never change a neighbourhood, so they are dropped before DBSCAN to save memory.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from .jaccard import jaccard_entries
from .knn import ArrayLike, as_float_tensor

# Entries up to eps + this margin are kept, so float32/float64 rounding of eps in sklearn's own
# comparison (d <= eps) cannot make the pruned matrix miss a neighbour.
_EPS_MARGIN = 1e-6


def neighbourhood_graph(rows: np.ndarray, cols: np.ndarray, dist: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR (N×N) distance graph for DBSCAN(metric="precomputed"): every diagonal entry stored (1 when
    absent, so setdiag inside sklearn cannot turn a missing self-distance into 0) and each row sorted by
    distance (what sklearn expects; avoids its re-sorting copy)."""
    has_diag = np.zeros(n, dtype=bool)
    has_diag[rows[rows == cols]] = True
    missing = np.flatnonzero(~has_diag)
    rows = np.concatenate([rows, missing])
    cols = np.concatenate([cols, missing])
    dist = np.concatenate([dist, np.ones(missing.size, dtype=np.float32)])
    order = np.lexsort((dist, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return sp.csr_matrix((dist[order], cols[order], indptr), shape=(n, n))


def pseudo_labels(features: ArrayLike, eps: float, k1: int = 30, k2: int = 6, min_samples: int = 4,
                  modality: Optional[ArrayLike] = None, knn: str = "torch",
                  device: Optional[Union[str, torch.device]] = None) -> np.ndarray:
    """DBSCAN(eps, min_samples, metric="precomputed") labels on the Jaccard distance of ``features``.

    Args:
        features: (N, D) numpy array or torch tensor (used as given, see compute_jaccard_distance).
        eps: DBSCAN radius on the Jaccard distance (0.6 SYSU, 0.3 RegDB in the released code).
        k1, k2: Jaccard neighbourhood sizes (30/6 intra-modality; 40/32 or 38/18 joint).
        min_samples: DBSCAN core-point threshold, the point itself included.
        modality: optional (N,) 0/1 array (0 = rgb, 1 = ir) → modality-balanced query expansion.
        knn, device: neighbour search backend and device (see clustering.knn.knn_search).

    Returns:
        int64 (N,) labels: −1 for outliers, clusters numbered 0..K−1 in sklearn's order (by the lowest
        index of each cluster's first core point).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if eps >= 1:
        # Every Jaccard distance is <= 1, so every pair is an eps-neighbour: one cluster or all noise.
        n = as_float_tensor(features).shape[0]  # validates the input as the main path does
        return np.full(n, 0 if n >= min_samples else -1, dtype=np.int64)
    rows, cols, dist, n = jaccard_entries(features, k1, k2, modality, knn, device,
                                          max_dist=eps + _EPS_MARGIN)
    graph = neighbourhood_graph(rows, cols, dist, n)
    del rows, cols, dist
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return labels.astype(np.int64)


def cluster_stats(labels: ArrayLike) -> dict:
    """Summary of a labelling (−1 = outlier).

    Returns dict(num_samples, num_clusters, num_outliers, sizes=dict(min, median, mean, max)) where sizes
    describes the member counts of the clusters (all 0 when there is no cluster).
    """
    lab = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    lab = lab.reshape(-1)
    _, sizes = np.unique(lab[lab >= 0], return_counts=True)
    summary = dict(min=0, median=0.0, mean=0.0, max=0)
    if sizes.size:
        summary = dict(min=int(sizes.min()), median=float(np.median(sizes)),
                       mean=float(sizes.mean()), max=int(sizes.max()))
    return dict(num_samples=int(lab.size), num_clusters=int(sizes.size),
                num_outliers=int((lab < 0).sum()), sizes=summary)
