"""k-reciprocal Jaccard distance (Zhong et al., CVPR 2017; method.md D.2 step 2) and its modality-balanced
variant (D.3 step 2), computed with sparse, vectorised operations.

Pipeline (N samples, neighbour table T = knn_search(features, k1), T[i, 0] = i):
1. R(i, k) = {j ∈ T[i, :k+1] : i ∈ T[j, :k+1]} (T has k1 columns, so k = k1 uses all k1 columns);
2. E(i) = R(i, k1) ∪ R(c, round(k1/2)) for every c ∈ R(i, k1) with |R(c, ·) ∩ R(i, k1)| > 2/3·|R(c, ·)|;
3. V_ij = exp(−d_ij) / Σ_{l∈E(i)} exp(−d_il) on j ∈ E(i), d_ij = 2 − 2⟨f_i, f_j⟩, 0 elsewhere;
4. local query expansion V_i ← mean_{j ∈ T[i, :k2]} V_j (balanced variant: mean of the per-modality means);
5. s_ij = Σ_k min(V_ik, V_jk), d_ij = max(0, 1 − s_ij / (2 − s_ij)); d = 1 wherever s = 0.

Inner products are taken on the features exactly as given (float32): the Baseline's flip-averaged
descriptors are not re-normalised (method.md A.3, D.2 step 1) and the released code applies the softmax of
step 3 to them as they are. The neighbour search uses the same float32 features.

Step 5 only visits pairs that share support: with the column lists of V (an inverted index), every non-zero
V_ik meets every V_jk (j ≥ i) of its column; the terms min(V_ik, V_jk) are summed per pair with bincount
in row chunks (run in torch.get_num_threads() threads), so memory is bounded by the chunk size and by the
number of pairs with s > 0. s is symmetric (the reference sums the same terms in the same order for (i, j)
and (j, i)), so only j ≥ i is computed and mirrored.

Where the steps live: 1-2 in :mod:`clustering.reciprocal`, 3-4 in :mod:`clustering.jaccard_weights`, 5 and
the pipeline (:func:`jaccard_entries`, :func:`compute_jaccard_distance`) here; the neighbour table comes from
:mod:`clustering.knn`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from .jaccard_weights import expansion_matrix, softmax_weights
from .knn import ArrayLike, as_float_tensor, knn_table
from .reciprocal import MAX_CELLS, ragged_positions, expanded_sets

# Upper bound on the number of (i, j, k) terms expanded at once in step 5.
_MAX_TERMS = 1 << 22
# Upper bound on rows × N of the per-chunk maps: step 2 (bool, passed to expanded_sets) and step 5's
# accumulator (float64).
_MAX_CELLS = MAX_CELLS


def _min_sum_plan(v: sp.csr_matrix):
    """Inverted index of ``v`` (CSR, sorted indices) and row chunks for _min_sum_chunk.

    For a CSR entry (i, k) let p be its position in column k's sorted row list; its partners j ≥ i are
    exactly the suffix p.. of that column. Chunks hold at most _MAX_TERMS terms (or one row) and at most
    _MAX_CELLS // N rows.
    """
    n = v.shape[0]
    coo_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(v.indptr))
    csc_order = np.lexsort((coo_rows, v.indices))  # CSC position → CSR entry
    pos = np.empty_like(csc_order)
    pos[csc_order] = np.arange(csc_order.size)
    col_ptr = np.concatenate([[0], np.cumsum(np.bincount(v.indices, minlength=n))])
    counts = col_ptr[v.indices + 1] - pos  # number of partners j >= i of each CSR entry
    cum_terms = np.concatenate([[0], np.cumsum(counts)])[v.indptr]  # terms before row r
    bounds, r0 = [], 0
    while r0 < n:
        r1 = int(np.searchsorted(cum_terms, cum_terms[r0] + _MAX_TERMS, side="right")) - 1
        r1 = min(n, r0 + max(1, _MAX_CELLS // n), max(r1, r0 + 1))
        bounds.append((r0, r1))
        r0 = r1
    ctx = dict(v=v, coo_rows=coo_rows, col_rows=coo_rows[csc_order], col_vals=v.data[csc_order], pos=pos,
               counts=counts)
    return ctx, bounds


def _min_sum_chunk(ctx: dict, r0: int, r1: int):
    """s_ij = Σ_k min(V_ik, V_jk) for rows r0 ≤ i < r1 and j ≥ i with s_ij > 0: (rows, cols, s float64)."""
    v, n = ctx["v"], ctx["v"].shape[0]
    e = slice(v.indptr[r0], v.indptr[r1])
    cnt = ctx["counts"][e]
    p = ragged_positions(ctx["pos"][e], cnt)
    j = ctx["col_rows"][p]
    m = ctx["col_vals"][p]
    np.minimum(m, np.repeat(v.data[e], cnt), out=m)
    # Compact the partner ids of this chunk to 0..U-1 (mark array, no sort) so the accumulator has
    # (r1 - r0)·U cells instead of (r1 - r0)·N.
    mark = np.zeros(n, dtype=bool)
    mark[j] = True
    uniq = np.flatnonzero(mark)
    remap = np.zeros(n, dtype=np.int64)
    remap[uniq] = np.arange(uniq.size)
    key = np.repeat(ctx["coo_rows"][e] - r0, cnt)
    key *= uniq.size
    key += remap[j]
    acc = np.bincount(key, weights=m, minlength=(r1 - r0) * uniq.size)
    nz = np.flatnonzero(acc)
    rr, cc = np.divmod(nz, uniq.size)
    return rr + r0, uniq[cc], acc[nz]


def _min_sums(v: sp.csr_matrix, workers: int = 1):
    """Step 5 pair sums, upper triangle incl. diagonal: yields (rows, cols, s) per row chunk, in order.

    ``workers`` > 1 runs chunks in a thread pool (the heavy numpy calls release the GIL).
    """
    ctx, bounds = _min_sum_plan(v)
    if workers <= 1 or len(bounds) == 1:
        for r0, r1 in bounds:
            yield _min_sum_chunk(ctx, r0, r1)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(lambda b: _min_sum_chunk(ctx, *b), bounds)


class RerankForm(NamedTuple):
    """The test-time re-ranking form of the distance (Zhong et al.), used by :mod:`clustering.rerank`.

    Without it :func:`jaccard_entries` computes the clustering form: a neighbour table of width k1 (the
    cluster-contrast convention, where the k1 nearest include the sample itself) and unscaled weights.

    Attributes:
        neighbours: width of the neighbour table T (Zhong et al.'s re-ranking uses k1 + 1).
        row_scale: optional (N,) divisor of the distances of row i in the softmax weights (see
            softmax_weights); None leaves them unscaled.
    """

    neighbours: int
    row_scale: Optional[np.ndarray] = None


def jaccard_entries(features: ArrayLike, k1: int = 30, k2: int = 6, modality: Optional[ArrayLike] = None,
                    knn: str = "torch", device: Optional[Union[str, torch.device]] = None,
                    max_dist: float = 1.0, rerank: Optional[RerankForm] = None
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All entries of the Jaccard distance with d_ij < 1 and d_ij <= max_dist, both triangles.

    features (N, D); modality optional (N,) 0/1. Returns (rows (E,) int64, cols (E,) int64, d (E,) float32,
    N). Missing pairs have d = 1. See compute_jaccard_distance for the other arguments; ``rerank`` selects
    the re-ranking form (:class:`RerankForm`; default None: the clustering form).
    """
    x = as_float_tensor(features, device)
    n = x.shape[0]
    mod = _check_modality(modality, n)
    k1 = min(int(k1), n)
    k2 = min(int(k2), k1)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    width = k1 if rerank is None else min(int(rerank.neighbours), n)
    row_scale = None if rerank is None else rerank.row_scale
    table, _, dots = knn_table(x, width, knn)
    table = table.cpu().numpy()
    dots = None if dots is None else dots.cpu().numpy()
    indptr, idx = expanded_sets(table, k1, _MAX_CELLS)
    v = sp.csr_matrix((softmax_weights(x, indptr, idx, table, dots, row_scale), idx, indptr), shape=(n, n))
    del x, dots
    if k2 != 1:  # the reference skips the expansion for k2 == 1
        v = (expansion_matrix(table, k2, mod) @ v).astype(np.float32)
    v.sort_indices()
    rows, cols, dist = [], [], []
    for r, c, s in _min_sums(v, workers=max(1, torch.get_num_threads())):
        s32 = s.astype(np.float32)
        d = np.float32(1.0) - s32 / (np.float32(2.0) - s32)
        np.maximum(d, 0, out=d)
        keep = (d < 1) & (d <= max_dist)
        rows.append(r[keep])
        cols.append(c[keep])
        dist.append(d[keep])
    del v
    r, c, d = (np.concatenate(a) for a in (rows, cols, dist))
    off = r != c  # mirror the strict upper triangle
    return np.concatenate([r, c[off]]), np.concatenate([c, r[off]]), np.concatenate([d, d[off]]), n


def _check_modality(modality: Optional[ArrayLike], n: int) -> Optional[np.ndarray]:
    """Validate the optional 0/1 modality array (0 = rgb, 1 = ir) of length N."""
    if modality is None:
        return None
    mod = modality.cpu().numpy() if isinstance(modality, torch.Tensor) else np.asarray(modality)
    mod = mod.reshape(-1)
    if mod.size != n or not np.isin(mod, (0, 1)).all():
        raise ValueError(f"modality must be a 0/1 array of length {n}")
    return mod.astype(np.int64)


def compute_jaccard_distance(features: ArrayLike, k1: int = 30, k2: int = 6,
                             modality: Optional[ArrayLike] = None, sparse: bool = False,
                             knn: str = "torch", device: Optional[Union[str, torch.device]] = None):
    """k-reciprocal Jaccard distance between all rows of ``features`` (method.md D.2 step 2 / D.3 step 2).

    Args:
        features: (N, D) numpy array or torch tensor, used as given (no re-normalisation), float32.
        k1, k2: neighbourhood sizes; clamped to k1 <= N and k2 <= k1 (small inputs do not raise).
        modality: optional (N,) 0/1 array (0 = rgb, 1 = ir) → modality-balanced query expansion.
        sparse: return a scipy CSR matrix holding only the entries with d < 1 (explicit zeros, such as the
            diagonal, are stored); absent entries mean d = 1.
        knn: "torch" or "faiss" neighbour search (see clustering.knn.knn_search).
        device: torch device for the neighbour search and dot products (default: the features' device).

    Returns:
        (N, N) float32 numpy array d_ij = max(0, 1 − s_ij/(2 − s_ij)), s_ij = Σ_k min(V_ik, V_jk),
        or its CSR form when ``sparse``.
    """
    rows, cols, d, n = jaccard_entries(features, k1, k2, modality, knn, device)
    if sparse:
        out = sp.csr_matrix((d, (rows, cols)), shape=(n, n), dtype=np.float32)
        out.sort_indices()
        return out
    dense = np.ones((n, n), dtype=np.float32)
    dense[rows, cols] = d
    return dense
