"""Ranking primitives shared by the protocol metrics of :mod:`utils.evaluation.metrics` (same tie semantics).

Everything here works on one block of query rows: input checks, the stable ranking, identity codes,
the relevant ranked positions, the LLCM same-camera removal and the distinct-identity CMC rank.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

# Ranked code of a position freed by the LLCM removal: query codes are >= -1, so it matches none.
REMOVED = -2


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


def check_inputs(distmat, q_pids, g_pids, max_rank: int, q_camids=None, g_camids=None):
    """Validate shapes/dtypes and return numpy versions of the inputs (camids may stay None).

    distmat (Q, G) real; q_pids, q_camids (Q,); g_pids, g_camids (G,). Returns (distmat (Q, G), dict of
    the four id arrays by name)."""
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


def encode_ids(q_pids: np.ndarray, g_pids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """Map gallery ids to 0..U-1 and query ids to the same codes (-1 if absent from the gallery).

    q_pids (Q,), g_pids (G,) -> (q_codes (Q,), g_codes (G,), U); codes are int32 (int64 for huge U)."""
    uniq, g_codes = np.unique(g_pids, return_inverse=True)
    # int32 codes halve the memory traffic of the (n, G) ranked-code gathers.
    code_t = np.int32 if uniq.size < np.iinfo(np.int32).max else np.int64
    g_codes = g_codes.reshape(-1).astype(code_t)
    if uniq.size == 0:
        return np.full(q_pids.shape, -1, code_t), g_codes, 0
    pos = np.clip(np.searchsorted(uniq, q_pids), 0, uniq.size - 1)
    q_codes = np.where(uniq[pos] == q_pids, pos, -1).astype(code_t)
    return q_codes, g_codes, int(uniq.size)


def ranked_hits(d, q_codes, g_codes):
    """Rank one block and locate the relevant items.

    d (n, G) distances, q_codes (n,), g_codes (G,) from :func:`encode_ids` -> (ranked codes (n, G),
    rows (H,), cols (H,), order (n, G) int64 gallery index per ranked position). (rows, cols) are the
    nonzero entries of the ranked match matrix, row-major, so within a row the relevant ranked
    positions come in increasing order. The fast quicksort ranking is
    kept unless a relevant item has an exactly equal neighbour in its row: only a tie run that
    mixes relevant and irrelevant items can change any metric, and every such run puts a
    relevant item next to an equal one, so re-ranking these rows (a superset of the rows where
    it matters) stably gives exactly the stable-argsort metrics.
    """
    order = np.argsort(d, axis=1)
    ranked = g_codes.take(order)
    rows, cols = hit_positions(ranked, q_codes)
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
        rows, cols = hit_positions(ranked, q_codes)
    return ranked, rows, cols, order


def drop_same_camera(ranked, order, rows, cols, q_codes, q_cams, g_cams):
    """Remove, from each ranked row, the relevant items taken by the query's own camera (LLCM rule).

    ranked: (n, G) ranked codes (modified in place); order: (n, G) gallery index per ranked position;
    rows, cols: the relevant ranked positions (from ranked_hits); q_cams: (n,); g_cams: (G,).
    The kept items of a row move to its front in ranked order (a stable partition) and the freed tail
    gets the code REMOVED, which matches no query and lies after every kept item, so it never enters
    a prefix used by the metrics. The kept order is the stable ranking restricted to the kept items:
    the rows whose ties could matter were already re-ranked stably (a removed item is relevant, so a
    tie run that mixes kept relevant and irrelevant items is flagged by ranked_hits).
    Returns the relevant positions (rows, cols) of the compacted rows.
    """
    gone = g_cams[order[rows, cols]] == q_cams[rows]
    if not gone.any():
        return rows, cols
    hit_rows = np.unique(rows[gone])
    removed = np.zeros((hit_rows.size, ranked.shape[1]), bool)
    removed[np.searchsorted(hit_rows, rows[gone]), cols[gone]] = True
    perm = np.argsort(removed, axis=1, kind="stable")        # kept first, each group in ranked order
    moved = np.take_along_axis(ranked[hit_rows], perm, axis=1)
    moved[np.sort(removed, axis=1)] = REMOVED               # the last (#removed) positions of each row
    ranked[hit_rows] = moved
    return hit_positions(ranked, q_codes)


def hit_positions(ranked: np.ndarray, q_codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row-major (rows (H,), cols (H,)) int64 of ranked (n, G) == query code q_codes (n,); flatnonzero
    on the contiguous 1-D view is several times faster than 2-D np.nonzero."""
    flat = np.flatnonzero(ranked == q_codes[:, None])
    rows = flat // ranked.shape[1]
    return rows, flat - rows * ranked.shape[1]


def distinct_hit_rank(ranked, first_pos, n_ids) -> np.ndarray:
    """1 + number of distinct identities ranked strictly before each row's first hit.

    Equivalent to the released ``new_cmc`` (dedupe the ranked identity list keeping first
    occurrences, then find the query identity in it): every identity seen before the first
    hit occupies one distinct rank. ranked: (n, G) ranked codes; first_pos: (n,) 0-based; returns (n,).
    Work is proportional to the prefixes only, marked in a (n, n_ids) "seen" table.
    """
    n = ranked.shape[0]
    total = int(first_pos.sum())
    rows = np.repeat(np.arange(n), first_pos)
    cols = np.arange(total) - np.repeat(np.cumsum(first_pos) - first_pos, first_pos)
    seen = np.zeros((n, n_ids), bool)
    seen[rows, ranked[rows, cols]] = True           # duplicates all write True: order-free
    return seen.sum(axis=1) + 1
