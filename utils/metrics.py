"""Re-ID ranking metrics of the SYSU-MM01 and RegDB test protocols (method.md H), vectorised.

Public API (torchreid ``metrics/rank.py`` style, one function per protocol)::

    cmc, mAP, mINP = eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)
    cmc, mAP, mINP = eval_regdb(distmat, q_pids, g_pids, max_rank=20)

``distmat`` is a (Q, G) query x gallery matrix, smaller = closer (numpy array of any float
dtype, or a torch tensor). ``cmc`` is a float64 array of length ``max_rank`` holding fractions
in [0, 1] (not percent); ``mAP`` and ``mINP`` are floats in [0, 1].

Tie semantics. Each row is ranked by a *stable* sort: gallery items at exactly the same
distance keep their gallery order (lower index first). The released MMM/AGW code calls
``np.argsort`` with NumPy's default quicksort, whose order among equal keys is unspecified,
so our numbers can differ from it only when a row contains exact ties. For speed we run the
(SIMD) quicksort first and re-rank with the stable sort only the rows where a relevant item
is exactly tied with a ranked neighbour (the only ties that can change a metric); the
metrics are identical to those of ``np.argsort(distmat, axis=1, kind="stable")``.

Per-query quantities (on the ranked list after the protocol's removal, positions 1-based):

* R = number of relevant (same identity) gallery items; queries with R = 0 are skipped and
  all averages are over the remaining "valid" queries.
* AP = (1/R) * sum over relevant positions k of (#relevant in top k) / k.
* INP = R / (position of the last relevant item)  (Ye et al., AGW, TPAMI 2021).
* CMC: the position of the first hit; rank-k value = 1 if it is <= k. SYSU uses the
  distinct-identity variant of the released code (see :func:`eval_sysu`).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

# Rows per block are chosen so that one block holds about this many (query, gallery) cells:
# the per-block temporaries then stay in cache-friendly sizes (a few MB) whatever Q and G are.
_BLOCK_CELLS = 1 << 19

# SYSU-MM01 cameras 2 (visible) and 3 (infrared) film the same room, so a camera-3 query
# must not be matched against camera-2 gallery images (official SYSU protocol).
_SYSU_IR_CAM, _SYSU_SAME_ROOM_CAM = 3, 2


def _as_numpy(x, name: str) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array (torch is not imported)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":    # NumPy has no bfloat16; float32 is exact
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot be converted to an array: {err}") from err


def _check_inputs(distmat, q_pids, g_pids, max_rank: int, q_camids=None, g_camids=None):
    """Validate shapes/dtypes and return numpy versions of the inputs (camids may stay None)."""
    d = _as_numpy(distmat, "distmat")
    if d.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {d.shape}")
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise ValueError(f"distmat must hold real numbers, got dtype {d.dtype}")
    # np.min propagates NaN, and is much cheaper than materialising np.isnan(d).
    if np.issubdtype(d.dtype, np.floating) and d.size and np.isnan(d.min()):
        raise ValueError("distmat contains NaN; rankings would be undefined")
    num_q, num_g = d.shape
    out = {}
    for name, arr, n in (("q_pids", q_pids, num_q), ("g_pids", g_pids, num_g),
                         ("q_camids", q_camids, num_q), ("g_camids", g_camids, num_g)):
        out[name] = None if arr is None else _as_numpy(arr, name)
        if out[name] is not None and out[name].shape != (n,):
            what = "queries" if name.startswith("q") else "gallery items"
            raise ValueError(f"{name} must have shape ({n},) to match distmat {d.shape} "
                             f"({n} {what}), got shape {out[name].shape}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    return d, out


def stable_argsort(distmat: np.ndarray) -> np.ndarray:
    """Row-wise ranking of a (Q, G) distance matrix, ascending, ties -> lower gallery index first.

    Equal to ``np.argsort(distmat, axis=1, kind="stable")`` (int64, shape (Q, G)) for NaN-free
    input, but faster:
    NumPy's default quicksort is used, and only rows where two sorted neighbours are exactly
    equal (the only rows where the unspecified quicksort tie order can matter) are re-sorted
    with the stable algorithm.
    """
    d = np.asarray(distmat)
    order = np.argsort(d, axis=1)
    if d.shape[1] < 2:
        return order
    ranked = np.take_along_axis(d, order, axis=1)
    tied = (ranked[:, 1:] == ranked[:, :-1]).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(d[tied], axis=1, kind="stable")
    return order


def _encode(q_pids: np.ndarray, g_pids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """Map gallery ids to 0..U-1 and query ids to the same codes (-1 if absent from the gallery)."""
    uniq, g_codes = np.unique(g_pids, return_inverse=True)
    # int32 codes halve the memory traffic of the (n, G) ranked-code gathers.
    code_t = np.int32 if uniq.size < np.iinfo(np.int32).max else np.int64
    g_codes = g_codes.reshape(-1).astype(code_t)
    if uniq.size == 0:
        return np.full(q_pids.shape, -1, code_t), g_codes, 0
    pos = np.clip(np.searchsorted(uniq, q_pids), 0, uniq.size - 1)
    q_codes = np.where(uniq[pos] == q_pids, pos, -1).astype(code_t)
    return q_codes, g_codes, int(uniq.size)


def _ranked_hits(d, q_codes, g_codes):
    """Rank one block and locate the relevant items -> (ranked codes (n, G), rows, cols).

    (rows, cols) are the nonzero entries of the ranked match matrix, row-major, so within a
    row the relevant ranked positions come in increasing order. The fast quicksort ranking is
    kept unless a relevant item has an exactly equal neighbour in its row: only a tie run that
    mixes relevant and irrelevant items can change any metric, and every such run puts a
    relevant item next to an equal one, so re-ranking these rows (a superset of the rows where
    it matters) stably gives exactly the stable-argsort metrics.
    """
    order = np.argsort(d, axis=1)
    ranked = g_codes.take(order)
    rows, cols = _hits(ranked, q_codes)
    val = d[rows, order[rows, cols]]
    left = np.zeros(rows.size, bool)
    right = np.zeros(rows.size, bool)
    has_l, has_r = cols > 0, cols < d.shape[1] - 1
    left[has_l] = d[rows[has_l], order[rows[has_l], cols[has_l] - 1]] == val[has_l]
    right[has_r] = d[rows[has_r], order[rows[has_r], cols[has_r] + 1]] == val[has_r]
    tied = np.unique(rows[left | right])
    if tied.size:
        order[tied] = np.argsort(d[tied], axis=1, kind="stable")
        ranked[tied] = g_codes.take(order[tied])
        rows, cols = _hits(ranked, q_codes)
    return ranked, rows, cols


def _hits(ranked: np.ndarray, q_codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row-major (rows, cols) of ranked == query code; flatnonzero on the contiguous 1-D view
    is several times faster than 2-D np.nonzero."""
    flat = np.flatnonzero(ranked == q_codes[:, None])
    rows = flat // ranked.shape[1]
    return rows, flat - rows * ranked.shape[1]


def _block_stats(d, q_codes, g_codes, n_ids, distinct: bool) -> Dict[str, np.ndarray]:
    """Per-query AP, INP, validity and CMC hit rank for one block of query rows.

    d: (n, G) distances; q_codes: (n,); g_codes: (G,) in 0..n_ids-1.
    ``hit_rank`` (1-based) is the position of the first relevant item, or with
    ``distinct=True`` the number of distinct identities up to and including it.
    """
    n = d.shape[0]
    ranked, rows, cols = _ranked_hits(d, q_codes, g_codes)
    num_rel = np.bincount(rows, minlength=n)
    valid = num_rel > 0
    first = np.cumsum(num_rel) - num_rel            # index of each row's first hit in `cols`
    # The j-th hit of a row (j = 1..R) has exactly j relevant items in its prefix.
    hit_no = np.arange(rows.size) - first[rows] + 1
    # astype: bincount of an empty index array returns int64 even with float weights.
    ap = np.bincount(rows, weights=hit_no / (cols + 1.0), minlength=n).astype(np.float64)
    ap[valid] /= num_rel[valid]
    inp = np.zeros(n)
    first_pos = np.zeros(n, np.int64)              # 0-based ranked position of the first hit
    first_pos[valid] = cols[first[valid]]
    inp[valid] = num_rel[valid] / (cols[first[valid] + num_rel[valid] - 1] + 1.0)
    if distinct:
        hit_rank = _distinct_hit_rank(ranked, first_pos, n_ids)
    else:
        hit_rank = first_pos + 1
    return {"valid": valid, "ap": ap, "inp": inp, "hit_rank": hit_rank}


def _distinct_hit_rank(ranked, first_pos, n_ids) -> np.ndarray:
    """1 + number of distinct identities ranked strictly before each row's first hit.

    Equivalent to the released ``new_cmc`` (dedupe the ranked identity list keeping first
    occurrences, then find the query identity in it): every identity seen before the first
    hit occupies one distinct rank. ranked: (n, G) ranked codes; first_pos: (n,) 0-based.
    Work is proportional to the prefixes only, marked in a (n, n_ids) "seen" table.
    """
    n = ranked.shape[0]
    total = int(first_pos.sum())
    rows = np.repeat(np.arange(n), first_pos)
    cols = np.arange(total) - np.repeat(np.cumsum(first_pos) - first_pos, first_pos)
    seen = np.zeros((n, n_ids), bool)
    seen[rows, ranked[rows, cols]] = True           # duplicates all write True: order-free
    return seen.sum(axis=1) + 1


def _empty_stats(num_q: int) -> Dict[str, np.ndarray]:
    """Per-query statistics of ``num_q`` queries, all invalid."""
    return {"valid": np.zeros(num_q, bool), "ap": np.zeros(num_q), "inp": np.zeros(num_q),
            "hit_rank": np.zeros(num_q, np.int64)}


def _query_stats(d, q_pids, g_pids, distinct: bool, rows=None, cols=None):
    """Per-query statistics of the (Q, G) matrix ``d`` restricted to ``rows`` x ``cols``.

    rows, cols: optional integer index arrays (None = all); q_pids/g_pids are for the full d.
    Rows are processed in blocks of about _BLOCK_CELLS cells and the restricted sub-matrix is
    gathered block by block, so peak memory stays O(block), never O(Q x G).
    Returns a dict of (len(rows),) arrays: valid, ap, inp, hit_rank.
    """
    q_codes, g_codes, n_ids = _encode(q_pids if rows is None else q_pids[rows],
                                      g_pids if cols is None else g_pids[cols])
    num_q = q_codes.size
    out = _empty_stats(num_q)
    if g_codes.size == 0:
        return out
    step = max(1, _BLOCK_CELLS // g_codes.size)
    for s in range(0, num_q, step):
        # slicing is a view; only restricted rows/columns need a (block-sized) copy
        block = d[s:s + step] if rows is None else d.take(rows[s:s + step], axis=0)
        if cols is not None:
            block = block.take(cols, axis=1)
        part = _block_stats(block, q_codes[s:s + step], g_codes, n_ids, distinct)
        for key, value in part.items():
            out[key][s:s + step] = value
    return out


def _summarise(stats: Dict[str, np.ndarray], max_rank: int) -> Tuple[np.ndarray, float, float]:
    """Average the per-query statistics over valid queries -> (cmc (max_rank,), mAP, mINP)."""
    valid = stats["valid"]
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a relevant gallery item (same identity, not removed by "
                         "the camera rule); the metrics are undefined")
    # A hit at rank r counts for every k >= r; ranks past max_rank fall into an overflow bin.
    ranks = np.minimum(stats["hit_rank"][valid], max_rank + 1)
    hits = np.bincount(ranks - 1, minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hits).astype(np.float64) / num_valid
    return cmc, float(np.mean(stats["ap"][valid])), float(np.mean(stats["inp"][valid]))


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids,
              max_rank: int = 20) -> Tuple[np.ndarray, float, float]:
    """SYSU-MM01 protocol of the released code (method.md H.2).

    Args:
        distmat: (Q, G) distances, smaller = closer (numpy or torch, any real dtype).
        q_pids, g_pids: (Q,), (G,) identity labels (any comparable dtype).
        q_camids, g_camids: (Q,), (G,) raw SYSU camera numbers 1..6 (not 0-based).
        max_rank: length of the returned CMC.

    Rules: each row is ranked by a stable sort (ties -> lower gallery index). For a query
    from camera 3, every gallery item from camera 2 is removed (same room); nothing else is.
    CMC uses the distinct-identity list: keep the first occurrence of each identity in the
    kept ranked list; rank-k = 1 if the query identity is among the first k distinct ids.
    Rank-1 equals the standard CMC, higher ranks can be larger. AP and INP use the kept list
    without deduplication. Queries with no relevant kept item are skipped. If fewer than
    ``max_rank`` distinct identities remain, the CMC is padded with its last value (it is
    already 1 for every valid query there), instead of failing as the released code does.

    Returns:
        (cmc float64 (max_rank,), mAP, mINP), all fractions in [0, 1].

    Raises:
        ValueError: on mismatched shapes, NaN distances, or when no query is valid.
    """
    d, a = _check_inputs(distmat, q_pids, g_pids, max_rank, q_camids, g_camids)
    if a["q_camids"] is None or a["g_camids"] is None:
        raise ValueError("eval_sysu needs q_camids and g_camids (raw SYSU cameras 1..6)")
    ir3 = np.flatnonzero(a["q_camids"] == _SYSU_IR_CAM)
    other = np.flatnonzero(a["q_camids"] != _SYSU_IR_CAM)
    kept_for_ir3 = np.flatnonzero(a["g_camids"] != _SYSU_SAME_ROOM_CAM)
    stats = _empty_stats(d.shape[0])
    # A stable ranking restricted to a subset of columns is the kept part of the full stable
    # ranking, so camera-3 queries are simply ranked against the gallery without camera 2.
    for rows, cols in ((ir3, kept_for_ir3), (other, None)):
        part = _query_stats(d, a["q_pids"], a["g_pids"], True, rows, cols)
        for key, value in part.items():
            stats[key][rows] = value
    return _summarise(stats, max_rank)


def eval_regdb(distmat, q_pids, g_pids, max_rank: int = 20) -> Tuple[np.ndarray, float, float]:
    """RegDB protocol (method.md H.3): standard CMC, AP and INP, no gallery removal.

    Args:
        distmat: (Q, G) distances, smaller = closer (numpy or torch, any real dtype).
        q_pids, g_pids: (Q,), (G,) identity labels.
        max_rank: length of the returned CMC; if the gallery is shorter, the CMC is padded
            with its last value.

    Each row is ranked by a stable sort (ties -> lower gallery index). CMC rank-k = 1 if a
    relevant item is among the first k (cumulative first hit, no deduplication). Queries
    without a relevant gallery item are skipped.

    Returns:
        (cmc float64 (max_rank,), mAP, mINP), all fractions in [0, 1].

    Raises:
        ValueError: on mismatched shapes, NaN distances, or when no query is valid.
    """
    d, a = _check_inputs(distmat, q_pids, g_pids, max_rank)
    return _summarise(_query_stats(d, a["q_pids"], a["g_pids"], distinct=False), max_rank)


def sysu_kept_gallery(q_camid: int, g_camids: np.ndarray) -> np.ndarray:
    """Boolean (G,) mask of the gallery items a SYSU query from camera ``q_camid`` may match.

    Everything is kept except camera-2 items for a camera-3 query (method.md H.2).
    """
    g = np.asarray(g_camids).reshape(-1)
    if int(q_camid) == _SYSU_IR_CAM:
        return g != _SYSU_SAME_ROOM_CAM
    return np.ones(g.shape, bool)


__all__ = ["eval_sysu", "eval_regdb", "stable_argsort", "sysu_kept_gallery"]
