"""Near-tie re-ranking of the k-NN table (see :mod:`clustering.knn`, "ties"): the Gram expansion's rounding
differs between block shapes, so rows whose neighbour distances lie within that rounding are re-sorted by
the directly computed squared distance, then by index, which does not depend on the block or device.
"""
from __future__ import annotations

import torch


def rerank_near_ties(x: torch.Tensor, sq: torch.Tensor, best, rel_tol: float = 1e-5,
                      max_floats: int = 1 << 24) -> None:
    """Re-sort, in place, the rows of ``best`` ([values, dots, indices], each (N, k)) whose consecutive
    neighbour distances differ by less than the rounding error of the Gram expansion, by the direct
    squared distance ||x_i − x_j||² (same for every block shape), then by index; self stays first.

    Only those rows are recomputed (few on real features, all duplicated ones), ``max_floats`` bounds the
    (rows, k, D) difference tensor of one chunk. Their values become the direct distances.
    """
    vals, dots, idx = best
    if vals.shape[1] < 3:
        return
    scale = (sq[:, None] + sq[idx]).amax(dim=1, keepdim=True)
    near = ((vals[:, 2:] - vals[:, 1:-1]) <= rel_tol * scale).any(dim=1)
    rows = torch.nonzero(near, as_tuple=True)[0]
    step = max(1, max_floats // (idx.shape[1] * x.shape[1]))
    for start in range(0, rows.numel(), step):
        r = rows[start:start + step]
        direct = (x[r][:, None, :] - x[idx[r]]).pow_(2).sum(dim=2)
        key = direct.clone()
        key[:, 0] = -1.0  # the point itself first, even among exact duplicates
        by_index = idx[r].argsort(dim=1)
        order = by_index.gather(1, key.gather(1, by_index).argsort(dim=1, stable=True))
        vals[r] = direct.gather(1, order)
        dots[r] = dots[r].gather(1, order)
        idx[r] = idx[r].gather(1, order)
