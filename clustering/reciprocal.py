"""Steps 1 and 2 of the k-reciprocal Jaccard distance (see :mod:`clustering.jaccard` for the pipeline):
the k-reciprocal neighbour sets R(i, k) and their expansion E(i), as CSR index arrays built from the
(N, k1) neighbour table without Python loops over samples; plus the ragged-array helper
:func:`ragged_positions`, which step 5 (clustering/jaccard.py) uses as well.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

# Default upper bound on rows × N of step 2's per-chunk boolean map (clustering/jaccard.py passes its own).
MAX_CELLS = 1 << 21


def ragged_positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[e], starts[e] + counts[e]) over e, without a Python loop."""
    total = int(counts.sum())
    offsets = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, counts)


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``keys`` occur in the sorted array ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, keys)
    return sorted_keys[np.minimum(pos, sorted_keys.size - 1)] == keys


def reciprocal_sets(table: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """R(i, k) for all i as CSR (indptr (N+1,), indices): j ∈ T[i, :k+1] with i ∈ T[j, :k+1].

    ``table`` is the (N, k1) neighbour table; only min(k+1, k1) columns exist, as in the reference.
    """
    n, m = table.shape[0], min(k + 1, table.shape[1])
    rows = np.repeat(np.arange(n, dtype=np.int64), m)
    cols = table[:, :m].reshape(-1).astype(np.int64)
    fwd = rows * n + cols
    keep = _member(cols * n + rows, np.sort(fwd))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=n))])
    return indptr, cols[keep]


def expanded_sets(table: np.ndarray, k1: int, max_cells: int = MAX_CELLS) -> Tuple[np.ndarray, np.ndarray]:
    """E(i) (step 2) as CSR (indptr (N+1,), indices sorted within each row).

    Rows are processed in chunks with a (chunk rows × N) boolean map of R(i, k1), so the test x ∈ R(i, k1)
    for the triples (i, c, x), c ∈ R(i, k1), x ∈ R(c, round(k1/2)), is a single lookup. ``max_cells``
    bounds chunk rows × N (the caller passes its own bound, so one setting limits steps 2 and 5).
    """
    n = table.shape[0]
    r_ptr, r_idx = reciprocal_sets(table, k1)
    h_ptr, h_idx = reciprocal_sets(table, int(round(k1 / 2)))  # round half to even, like np.around
    h_len = np.diff(h_ptr)
    r_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(r_ptr))
    in_r = np.zeros((min(n, max(1, max_cells // n)), n), dtype=bool)
    parts = [r_rows * n + r_idx]
    for ra in range(0, n, in_r.shape[0]):
        pairs = slice(r_ptr[ra], r_ptr[min(n, ra + in_r.shape[0])])
        i_loc, c = r_rows[pairs] - ra, r_idx[pairs]
        in_r[i_loc, c] = True
        cnt = h_len[c]
        x = h_idx[ragged_positions(h_ptr[c], cnt)]
        ti = np.repeat(i_loc, cnt)
        inside = in_r[ti, x]
        in_r[i_loc, c] = False
        overlap = np.bincount(np.repeat(np.arange(c.size), cnt), weights=inside, minlength=c.size)
        accept = overlap > (2.0 / 3.0) * cnt  # the reference's float comparison
        new = np.repeat(accept, cnt) & ~inside  # only members not already in R(i, k1)
        parts.append((ti[new] + ra) * n + x[new])
    keys = np.sort(np.concatenate(parts))
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # unique; faster than np.unique here
    rows, cols = np.divmod(keys, n)
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]), cols
