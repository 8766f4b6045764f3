"""Steps 3 and 4 of the k-reciprocal Jaccard distance (see :mod:`clustering.jaccard` for the pipeline):
the softmax weights V over each expanded set E(i), and local query expansion as a sparse averaging
operator (plain, or modality-balanced for the joint clustering).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch


def _pair_dots(x: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """⟨x_r, x_c⟩ for index pairs, float32, gathered in steps of ~64 MB (numpy on CPU, torch elsewhere)."""
    out = np.empty(rows.size, dtype=np.float32)
    step = max(1, (1 << 24) // x.shape[1])
    xn = x.numpy() if x.device.type == "cpu" else None
    for s in range(0, rows.size, step):
        r, c = rows[s:s + step], cols[s:s + step]
        if xn is not None:
            out[s:s + step] = np.einsum("ij,ij->i", xn[r], xn[c])
        else:
            r, c = torch.from_numpy(r).to(x.device), torch.from_numpy(c).to(x.device)
            out[s:s + step] = (x[r] * x[c]).sum(dim=1).cpu().numpy()
    return out


def softmax_weights(x: torch.Tensor, indptr: np.ndarray, indices: np.ndarray,
                    table: Optional[np.ndarray] = None, table_dots: Optional[np.ndarray] = None,
                    row_scale: Optional[np.ndarray] = None) -> np.ndarray:
    """Step 3: V data aligned with (indptr, indices); row i = softmax over E(i) of −(2 − 2⟨f_i, f_j⟩).

    ``x`` is the (N, D) float32 feature tensor (any device). Inner products of pairs found in the neighbour
    ``table`` (N, k1) are taken from ``table_dots`` (the float32 Gram entries of the search); the others are
    recomputed in float32. ``row_scale`` (N,) > 0 optionally divides the distances of row i by
    ``row_scale[i]`` first (Zhong et al.'s re-ranking scales each row to a maximum of 1). The softmax
    itself runs in float64; returns float32.
    """
    n = indptr.size - 1
    lens = np.diff(indptr)
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    dots = np.empty(indices.size, dtype=np.float32)
    todo = np.ones(indices.size, dtype=bool)
    if table is not None and table_dots is not None:
        tkeys = np.arange(n, dtype=np.int64)[:, None] * n + table
        order = np.argsort(tkeys, axis=None)
        tkeys = tkeys.reshape(-1)[order]
        keys = rows * n + indices
        pos = np.minimum(np.searchsorted(tkeys, keys), tkeys.size - 1)
        found = tkeys[pos] == keys
        dots[found] = table_dots.reshape(-1)[order[pos[found]]]
        todo = ~found
    dots[todo] = _pair_dots(x, rows[todo], indices[todo])
    logits = -(2.0 - 2.0 * dots.astype(np.float64))
    if row_scale is not None:
        logits /= np.repeat(np.asarray(row_scale, dtype=np.float64), lens)
    nonempty = lens > 0
    starts = indptr[:-1][nonempty]
    row_max = np.zeros(n)
    row_max[nonempty] = np.maximum.reduceat(logits, starts)
    e = np.exp(logits - np.repeat(row_max, lens))
    row_sum = np.ones(n)
    row_sum[nonempty] = np.add.reduceat(e, starts)
    return (e / np.repeat(row_sum, lens)).astype(np.float32)


def expansion_matrix(table: np.ndarray, k2: int, modality: Optional[np.ndarray] = None) -> sp.csr_matrix:
    """Step 4 as a sparse averaging operator Q (N×N), V_qe = Q·V.

    Plain: Q[i, j] = 1/k2 for j ∈ T[i, :k2]. Balanced (``modality`` 0/1 per sample): Q[i, j] = 1/(2·n_m(i))
    for a neighbour j of modality m, n_m(i) = number of such neighbours among T[i, :k2] (mean of the two
    modality means), or 1/k2 if only one modality occurs among them.
    """
    n, k2 = table.shape[0], min(k2, table.shape[1])
    cols = table[:, :k2].astype(np.int64)
    if modality is None:
        w = np.full(cols.shape, 1.0 / k2)
    else:
        mod = modality[cols]
        n_ir = mod.sum(axis=1, keepdims=True)
        n_rgb = k2 - n_ir
        both = (n_ir > 0) & (n_rgb > 0)
        per_mod = np.where(mod == 1, 1.0 / np.maximum(n_ir, 1), 1.0 / np.maximum(n_rgb, 1))
        w = np.where(both, 0.5 * per_mod, 1.0 / k2)
    rows = np.repeat(np.arange(n), k2)
    return sp.csr_matrix((w.reshape(-1), (rows, cols.reshape(-1))), shape=(n, n))
