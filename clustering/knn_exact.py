"""The torch backend of the exact k-NN search (see :mod:`clustering.knn` for the conventions): a blocked,
symmetric Gram-matrix search that keeps a running top-k per row, and the merge primitives it uses.

:func:`torch_knn` (the search :mod:`clustering.knn` calls) tiles the upper triangle of the Gram matrix;
off-diagonal blocks merge only the entries below the rows' current k-th distance (``_merge_sparse``) or,
when too many pass, a dense top-k of the block (``_merge_dense``); :func:`mask_nonzero` finds the entries
that pass. Near-tied rows are re-ranked afterwards (:func:`clustering.knn_ties.rerank_near_ties`).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .knn_ties import rerank_near_ties


def _block_topk(dist: torch.Tensor, dots: torch.Tensor, k: int, col_offset: int):
    """The k' = min(k, C) smallest entries of each row of ``dist`` (R, C), sorted by (value, column).

    Returns (values, the matching entries of ``dots``, global column indices int64), each (R, k'). Ties
    inside the selection are ordered by lower index; ties exactly at the selection boundary are resolved by
    torch.topk (arbitrary), which only matters for exact duplicates.
    """
    k = min(k, dist.shape[1])
    cand = dist.topk(k, dim=1, largest=False, sorted=False).indices
    cand = cand.sort(dim=1).values  # ascending index, so the stable value sort breaks ties by index
    order = dist.gather(1, cand).sort(dim=1, stable=True).indices
    cand = cand.gather(1, order)
    return dist.gather(1, cand), dots.gather(1, cand), cand + col_offset


def _merge_sparse(best, rows: torch.Tensor, new):
    """Merge candidates into running top-k lists, in place.

    best: [values (R, k), dots (R, k), indices (R, k)], rows sorted by (value, index); rows: (M,) local row of
    each candidate; new: (values, dots, indices), each (M,). Every touched row keeps its k best entries in
    the lexicographic order (value, index), i.e. ties go to the lower index.
    """
    if rows.numel() == 0:
        return
    k = best[0].shape[1]
    per_row = torch.bincount(rows, minlength=best[0].shape[0])
    act = torch.nonzero(per_row, as_tuple=True)[0]  # only rows that received candidates
    rows = (torch.cumsum(per_row > 0, 0) - 1)[rows]
    own = torch.arange(act.numel(), device=rows.device).repeat_interleave(k)
    cat = [torch.cat([t[act].reshape(-1), c]) for t, c in zip(best, new)]
    # Sort by (row, value) with one stable sort of an int64 key: row in the high word, the order-preserving
    # bits of the float32 value in the low word. Only if some keys tie, sort by index first (ties → index).
    bits = cat[0].view(torch.int32)
    key = (torch.cat([own, rows]) << 32) | ((bits ^ ((bits >> 31) & 0x7FFFFFFF)).long() + 2 ** 31)
    order = key.argsort(stable=True)
    if bool((key[order[1:]] == key[order[:-1]]).any()):
        order = cat[2].argsort(stable=True)
        order = order[key[order].argsort(stable=True)]
    counts = k + per_row[act]
    first = torch.cumsum(counts, 0) - counts
    take = order[(first[:, None] + torch.arange(k, device=rows.device)).reshape(-1)]
    for t, c in zip(best, cat):
        t[act] = c[take].view(-1, k)


def _merge_dense(best, dist: torch.Tensor, dots: torch.Tensor, k: int, col_offset: int):
    """Merge the k smallest entries of every row of a dense block into running top-k lists, in place."""
    new = _block_topk(dist, dots, k, col_offset)
    _merge_sparse(best, torch.arange(dist.shape[0], device=dist.device).repeat_interleave(new[0].shape[1]),
                  tuple(t.reshape(-1) for t in new))


def mask_nonzero(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the True entries of a contiguous (R, C) bool mask, in row-major order.

    For sparse masks it is cheaper to find the non-zero 8-byte words of the mask first and only then the
    True bytes inside them (torch.nonzero costs a few ns per entry scanned).
    """
    if mask.shape[1] % 8 or not mask.is_contiguous():
        return torch.nonzero(mask, as_tuple=True)
    wr, wc = torch.nonzero(mask.view(torch.int64), as_tuple=True)
    cols = wc[:, None] * 8 + torch.arange(8, device=mask.device)
    hit = mask[wr[:, None], cols]
    return wr[:, None].expand_as(cols)[hit], cols[hit]


def _sq_dist(g: torch.Tensor, sq_rows: torch.Tensor, sq_cols: torch.Tensor) -> torch.Tensor:
    """d_ij = |x_i|² + |x_j|² − 2⟨x_i, x_j⟩ from a Gram block (the expansion faiss uses too)."""
    return torch.add(sq_rows[:, None], sq_cols[None, :]).add_(g, alpha=-2.0)


def _tiles(start: int, stop: int, leaf: int):
    """Split the diagonal block [start, stop)² into diagonal leaves (size <= leaf) and the off-diagonal
    rectangles between halves, recursively. Returns (leaves [(a, ea)], rectangles [(a, ea, b, eb)])."""
    if stop - start <= leaf:
        return [(start, stop)], []
    mid = start + (stop - start + 1) // 2
    lo, hi = _tiles(start, mid, leaf), _tiles(mid, stop, leaf)
    return lo[0] + hi[0], [(start, mid, mid, stop)] + lo[1] + hi[1]


def torch_knn(x: torch.Tensor, k: int, chunk: int):
    """Blocked symmetric exact search; x (N, D) float32.

    The upper triangle of the Gram matrix is tiled with chunk-sized blocks; the diagonal blocks are split
    recursively into halves down to chunk/2, so only the diagonal leaves are computed in full (the wasted
    lower half of the leaves is N·chunk/4 entries). Pass 1 runs the leaves with a dense top-k, which
    gives every row a first k-th distance τ_i. Pass 2 visits every off-diagonal rectangle (a, b) once: an
    entry can only enter row i's list if d_ij <= τ_i, so the a-rows (d <= τ_a, row-wise) and the b-rows
    (d <= τ_b, column-wise — the rectangle is its transpose's data) only merge the entries below their
    thresholds (or, when more than 1/16 of the entries pass, a dense top-k of each side).

    Returns (indices (N, k) int64, squared distances (N, k), inner products ⟨x_i, x_j⟩ (N, k)).
    """
    n = x.shape[0]
    sq = (x * x).sum(dim=1)
    best = [torch.full((n, k), float("inf"), device=x.device), torch.zeros((n, k), device=x.device),
            torch.full((n, k), -1, dtype=torch.int64, device=x.device)]
    starts = list(range(0, n, chunk))
    leaves, rects = [], [(a, min(a + chunk, n), b, min(b + chunk, n)) for a in starts for b in starts if b > a]
    for a in starts:
        tiles = _tiles(a, min(a + chunk, n), max(1, chunk // 2))
        leaves += tiles[0]
        rects += tiles[1]
    for a, ea in leaves:
        g = x[a:ea] @ x[a:ea].t()
        d = _sq_dist(g, sq[a:ea], sq[a:ea]).fill_diagonal_(float("-inf"))  # self pinned first
        for t, v in zip(best, _block_topk(d, g, k, a)):
            t[a:ea, : v.shape[1]] = v
    for a, ea, b, eb in rects:
        g = x[a:ea] @ x[b:eb].t()
        d = _sq_dist(g, sq[a:ea], sq[b:eb])
        to_a = d <= best[0][a:ea, -1:]  # non-strict: a tie with the k-th may still win on index
        to_b = d <= best[0][b:eb, -1][None, :]
        either = to_a | to_b
        if int(torch.count_nonzero(either)) > d.numel() // 16:
            # Loose thresholds (early rectangles of unordered data): a dense top-k per side is cheaper.
            del to_a, to_b, either
            _merge_dense([t[a:ea] for t in best], d, g, k, b)
            _merge_dense([t[b:eb] for t in best], d.t().contiguous(), g.t(), k, a)
            continue
        r, c = mask_nonzero(either)
        va, vb = to_a[r, c], to_b[r, c]
        vals, dots = d[r, c], g[r, c]
        _merge_sparse([t[a:ea] for t in best], r[va], (vals[va], dots[va], c[va] + b))
        _merge_sparse([t[b:eb] for t in best], c[vb], (vals[vb], dots[vb], r[vb] + a))
    best[0][:, 0] = 0.0
    rerank_near_ties(x, sq, best)
    return best[2], best[0].clamp_(min=0.0), best[1]
