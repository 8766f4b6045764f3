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
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from .knn import ArrayLike, as_float_tensor, knn_table

# Upper bound on the number of (i, j, k) terms expanded at once in step 5.
_MAX_TERMS = 1 << 22
# Upper bound on rows × N of the per-chunk maps: step 2 (bool) and step 5's accumulator (float64).
_MAX_CELLS = 1 << 21


def _ragged_positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
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


def expanded_sets(table: np.ndarray, k1: int) -> Tuple[np.ndarray, np.ndarray]:
    """E(i) (step 2) as CSR (indptr (N+1,), indices sorted within each row).

    Rows are processed in chunks with a (chunk rows × N) boolean map of R(i, k1), so the test x ∈ R(i, k1)
    for the triples (i, c, x), c ∈ R(i, k1), x ∈ R(c, round(k1/2)), is a single lookup.
    """
    n = table.shape[0]
    r_ptr, r_idx = reciprocal_sets(table, k1)
    h_ptr, h_idx = reciprocal_sets(table, int(round(k1 / 2)))  # round half to even, like np.around
    h_len = np.diff(h_ptr)
    r_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(r_ptr))
    in_r = np.zeros((min(n, max(1, _MAX_CELLS // n)), n), dtype=bool)
    parts = [r_rows * n + r_idx]
    for ra in range(0, n, in_r.shape[0]):
        pairs = slice(r_ptr[ra], r_ptr[min(n, ra + in_r.shape[0])])
        i_loc, c = r_rows[pairs] - ra, r_idx[pairs]
        in_r[i_loc, c] = True
        cnt = h_len[c]
        x = h_idx[_ragged_positions(h_ptr[c], cnt)]
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
    p = _ragged_positions(ctx["pos"][e], cnt)
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


def jaccard_entries(features: ArrayLike, k1: int = 30, k2: int = 6, modality: Optional[ArrayLike] = None,
                    knn: str = "torch", device: Optional[Union[str, torch.device]] = None,
                    max_dist: float = 1.0, neighbours: Optional[int] = None,
                    row_scale: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All entries of the Jaccard distance with d_ij < 1 and d_ij <= max_dist, both triangles.

    Returns (rows int64, cols int64, d float32, N). Missing pairs have d = 1. See compute_jaccard_distance.
    Two options serve the test-time re-ranking of :mod:`clustering.rerank` (defaults: the clustering form):
    ``neighbours`` is the width of the neighbour table T (default k1, the cluster-contrast convention
    where the k1 nearest include the sample itself; Zhong et al.'s re-ranking uses k1 + 1), and
    ``row_scale`` (N,) divides the distances of row i in the softmax weights (see softmax_weights).
    """
    x = as_float_tensor(features, device)
    n = x.shape[0]
    mod = _check_modality(modality, n)
    k1 = min(int(k1), n)
    k2 = min(int(k2), k1)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    width = k1 if neighbours is None else min(int(neighbours), n)
    table, _, dots = knn_table(x, width, knn)
    table = table.cpu().numpy()
    dots = None if dots is None else dots.cpu().numpy()
    indptr, idx = expanded_sets(table, k1)
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
