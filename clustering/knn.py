"""Exact k-nearest-neighbour search by squared L2 distance (the neighbour table of the Jaccard distance).

The torch backend computes the Gram matrix block by block and keeps a running top-k per row, so memory is
O(N·k + chunk²) instead of O(N²). The Gram matrix is symmetric: only the blocks (a, b) with a <= b are
multiplied and each block updates the running top-k of both its row block and its column block, which halves
the FLOPs; off-diagonal blocks only merge the entries below the rows' current k-th distance (see
``_knn_torch``). The faiss backend (optional dependency) uses an exact flat L2 index.

Conventions shared by both backends:
* the distance is the squared L2 distance ||x_i||² + ||x_j||² − 2⟨x_i, x_j⟩ in float32 (the same expansion
  faiss uses), so features need not be L2-normalised;
* every point is its own first neighbour (column 0), even when exact duplicates exist — for non-duplicated
  data this is what an exact search returns anyway, and it keeps R(i, k) of the Jaccard distance well defined;
* ties are broken by the lower index (torch backend; faiss: faiss's order). The same pair's distance can
  differ by a few ulps between Gram blocks of different shapes (BLAS picks other kernels), so exact
  duplicates would otherwise come out in an order that depends on ``chunk``, the CPU or the GPU: rows
  whose neighbour distances lie within rounding of each other are re-ranked by the directly computed
  ||x_i − x_j||², which is exactly 0 for duplicates (see ``_rerank_near_ties``). The search keeps
  ``TIE_MARGIN`` neighbours beyond k until after that re-ranking, so the re-ranking also decides which
  tied candidates take the last of the k places (up to TIE_MARGIN tied candidates past the k-th).

Devices: the torch backend runs where the features are (or on ``device``), so a CUDA run searches on its
GPU. The Gram products there are exact float32: TF32, which the training enables for speed
(utils/device.py), is switched off for the search (``exact_float32``), so the neighbours are those of
the CPU path (up to exact ties, see above). Memory on the device: the features (N·D·4 bytes) plus about
11·chunk² bytes of blocks and N·k·16 bytes of running lists — for SYSU-MM01's joint clustering
(34,167 × 2048, k 40, chunk 4096) 280 MB + 185 MB + 22 MB, about 0.5 GB.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
# Neighbours searched beyond k before the near-tie re-ranking cuts the table to k (see knn_table).
TIE_MARGIN = 8

def as_float_tensor(features: ArrayLike, device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """(N, D) numpy/torch features → contiguous float32 tensor on ``device`` (default: the input's device).

    Raises ValueError for a wrong rank, an empty array or non-finite values.
    """
    x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    x = x.detach()
    if device is not None:
        x = x.to(device)
    x = x.to(torch.float32).contiguous()
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf")
    return x


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


def _mask_nonzero(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
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


def _knn_torch(x: torch.Tensor, k: int, chunk: int):
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
        r, c = _mask_nonzero(either)
        va, vb = to_a[r, c], to_b[r, c]
        vals, dots = d[r, c], g[r, c]
        _merge_sparse([t[a:ea] for t in best], r[va], (vals[va], dots[va], c[va] + b))
        _merge_sparse([t[b:eb] for t in best], c[vb], (vals[vb], dots[vb], r[vb] + a))
    best[0][:, 0] = 0.0
    _rerank_near_ties(x, sq, best)
    return best[2], best[0].clamp_(min=0.0), best[1]


def _rerank_near_ties(x: torch.Tensor, sq: torch.Tensor, best, rel_tol: float = 1e-5,
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


@contextlib.contextmanager
def exact_float32(device: torch.device):
    """float32 matrix products on ``device`` without TF32 for the duration (restored afterwards).

    Only the legacy ``allow_tf32`` switch is touched, and only when it is on, so a process that set the
    precision through torch's newer API is never left with a mix of the two.
    """
    matmul = torch.backends.cuda.matmul
    if device.type != "cuda" or not matmul.allow_tf32:
        yield
        return
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = True


def _faiss_index(faiss, dim: int, device: torch.device):
    """(index, resources): an exact flat L2 index on the GPU of ``device`` when faiss-gpu is installed,
    else on the CPU. The GPU resources object must outlive the index, so it is returned too."""
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        config = faiss.GpuIndexFlatConfig()
        config.device = device.index if device.index is not None else torch.cuda.current_device()
        resources = faiss.StandardGpuResources()
        return faiss.GpuIndexFlatL2(resources, dim, config), resources
    return faiss.IndexFlatL2(dim), None


def _knn_faiss(x: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact search with a faiss flat L2 index (faiss-gpu on the features' GPU when installed, else the
    CPU); self moved to column 0 (see module docstring)."""
    try:
        import faiss  # optional dependency
    except ImportError:
        raise ImportError("knn='faiss' needs the faiss package (pip install faiss-cpu); "
                          "use knn='torch' otherwise") from None
    xs = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
    index, _resources = _faiss_index(faiss, xs.shape[1], x.device)
    index.add(xs)
    dist, idx = index.search(xs, k)
    n = xs.shape[0]
    self_idx = np.arange(n)[:, None]
    # Drop self from wherever it is (or the last column if absent) and put it in front.
    keep = idx != self_idx
    missing = keep.all(axis=1)
    keep[missing, k - 1] = False
    rest_i = idx[keep].reshape(n, k - 1)
    rest_d = dist[keep].reshape(n, k - 1)
    idx = np.concatenate([self_idx, rest_i], axis=1).astype(np.int64)
    dist = np.concatenate([np.zeros((n, 1), np.float32), np.maximum(rest_d, 0)], axis=1)
    return torch.from_numpy(idx), torch.from_numpy(dist.astype(np.float32))


def knn_table(x: torch.Tensor, k: int, knn: str = "torch", chunk: int = 4096):
    """Neighbour table for the Jaccard distance: (indices (N, k) int64, squared distances (N, k),
    inner products (N, k) or None for faiss), all torch tensors; x must come from as_float_tensor."""
    if knn == "torch":
        k = min(int(k), x.shape[0])
        # TIE_MARGIN extra columns: which of several (near-)tied candidates takes the last places is then
        # decided by the exact re-ranking (direct distance, then index), not by the rounding of the Gram
        # block they came from, so block size and device do not change the table.
        with torch.no_grad(), exact_float32(x.device):
            idx, dist, dots = _knn_torch(x, min(k + TIE_MARGIN, x.shape[0]), int(chunk))
        return idx[:, :k].contiguous(), dist[:, :k].contiguous(), dots[:, :k].contiguous()
    if knn == "faiss":
        return _knn_faiss(x, min(int(k), x.shape[0])) + (None,)
    raise ValueError(f"knn must be 'torch' or 'faiss', got {knn!r}")


def knn_search(features: ArrayLike, k: int, knn: str = "torch",
               device: Optional[Union[str, torch.device]] = None,
               chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of ``features`` among all rows, by squared L2 distance.

    Args:
        features: (N, D) numpy array or torch tensor (any float dtype; computed in float32).
        k: neighbours per point including the point itself; clamped to N.
        knn: "torch" (blocked matmul on ``device``) or "faiss" (exact flat index; needs faiss-cpu, or
            faiss-gpu to search on a CUDA ``device``).
        device: torch device for the "torch" backend; default = the device of ``features`` (CPU for numpy).
        chunk: block size of the Gram matrix; peak extra memory ≈ 11·chunk² bytes + N·k·16 bytes.

    Returns:
        (indices, distances): int64 (N, k') and float32 (N, k') numpy arrays, k' = min(k, N), rows sorted by
        increasing squared distance d_ij = ||f_i||² + ||f_j||² − 2⟨f_i, f_j⟩, column 0 = the point itself.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    x = as_float_tensor(features, device)
    idx, dist, _ = knn_table(x, k, knn, chunk)
    return idx.cpu().numpy(), dist.cpu().numpy()
