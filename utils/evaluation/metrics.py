"""Re-ID ranking metrics of the SYSU-MM01, RegDB and LLCM test protocols (method.md H;
dataset_layouts.md section 4), vectorised.

Public API (torchreid ``metrics/rank.py`` style, one function per protocol)::

    cmc, mAP, mINP = eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)
    cmc, mAP, mINP = eval_regdb(distmat, q_pids, g_pids, max_rank=20)
    cmc, mAP, mINP = eval_llcm(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)

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
* CMC: the position of the first hit; rank-k value = 1 if it is <= k. SYSU and LLCM use the
  distinct-identity variant of the released code (see :func:`eval_sysu`).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from utils.evaluation.ranking import (check_inputs, distinct_hit_rank, drop_same_camera, encode_ids, ranked_hits,
                           stable_argsort)

# Rows per block are chosen so that one block holds about this many (query, gallery) cells:
# the per-block temporaries then stay in cache-friendly sizes (a few MB) whatever Q and G are.
_BLOCK_CELLS = 1 << 19

# SYSU-MM01 cameras 2 (visible) and 3 (infrared) film the same room, so a camera-3 query
# must not be matched against camera-2 gallery images (official SYSU protocol).
_SYSU_IR_CAM, _SYSU_SAME_ROOM_CAM = 3, 2


def _block_stats(d, q_codes, g_codes, n_ids, distinct: bool, cams=None) -> Dict[str, np.ndarray]:
    """Per-query AP, INP, validity and CMC hit rank for one block of query rows.

    d: (n, G) distances; q_codes: (n,); g_codes: (G,) in 0..n_ids-1.
    ``hit_rank`` (1-based) is the position of the first relevant item, or with
    ``distinct=True`` the number of distinct identities up to and including it.
    cams: optional ((n,) query cameras, (G,) gallery cameras): the relevant items of the query's
    camera are removed from its ranked list first (LLCM rule).
    """
    n = d.shape[0]
    ranked, rows, cols, order = ranked_hits(d, q_codes, g_codes)
    if cams is not None:
        rows, cols = drop_same_camera(ranked, order, rows, cols, q_codes, *cams)
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
        hit_rank = distinct_hit_rank(ranked, first_pos, n_ids)
    else:
        hit_rank = first_pos + 1
    return {"valid": valid, "ap": ap, "inp": inp, "hit_rank": hit_rank}


def _empty_stats(num_q: int) -> Dict[str, np.ndarray]:
    """Per-query statistics of ``num_q`` queries, all invalid."""
    return {"valid": np.zeros(num_q, bool), "ap": np.zeros(num_q), "inp": np.zeros(num_q),
            "hit_rank": np.zeros(num_q, np.int64)}


def _query_stats(d, q_pids, g_pids, distinct: bool, rows=None, cols=None, cams=None):
    """Per-query statistics of the (Q, G) matrix ``d`` restricted to ``rows`` x ``cols``.

    rows, cols: optional integer index arrays (None = all); q_pids/g_pids are for the full d.
    cams: optional ((Q,), (G,)) cameras of the full d -> same-identity same-camera removal (rows
    and cols must then be None).
    Rows are processed in blocks of about _BLOCK_CELLS cells and the restricted sub-matrix is
    gathered block by block, so peak memory stays O(block), never O(Q x G).
    Returns a dict of (len(rows),) arrays: valid, ap, inp, hit_rank.
    """
    q_codes, g_codes, n_ids = encode_ids(q_pids if rows is None else q_pids[rows],
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
        block_cams = None if cams is None else (cams[0][s:s + step], cams[1])
        part = _block_stats(block, q_codes[s:s + step], g_codes, n_ids, distinct, block_cams)
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


def _with_cameras(distmat, q_pids, g_pids, max_rank, q_camids, g_camids, who: str):
    """:func:`check_inputs` for a protocol whose removal rule needs both camera arrays."""
    d, a = check_inputs(distmat, q_pids, g_pids, max_rank, q_camids, g_camids)
    if a["q_camids"] is None or a["g_camids"] is None:
        name, cams = who.split(" ", 1)
        raise ValueError(f"{name} needs q_camids and g_camids {cams}")
    return d, a


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
    d, a = _with_cameras(distmat, q_pids, g_pids, max_rank, q_camids, g_camids, "eval_sysu (raw SYSU cameras 1..6)")
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
    d, a = check_inputs(distmat, q_pids, g_pids, max_rank)
    return _summarise(_query_stats(d, a["q_pids"], a["g_pids"], distinct=False), max_rank)


def eval_llcm(distmat, q_pids, g_pids, q_camids, g_camids,
              max_rank: int = 20) -> Tuple[np.ndarray, float, float]:
    """LLCM protocol (dataset_layouts.md section 4): the SYSU metric with another removal rule.

    Args:
        distmat: (Q, G) distances, smaller = closer (numpy or torch, any real dtype).
        q_pids, g_pids: (Q,), (G,) identity labels.
        q_camids, g_camids: (Q,), (G,) LLCM camera numbers 1..9 (visible and infrared share them).
        max_rank: length of the returned CMC.

    Rules: each row is ranked by a stable sort (ties -> lower gallery index). Gallery items with the
    query's identity *and* the query's camera number are removed (across modalities; nothing else is,
    and there is no SYSU camera-3/camera-2 rule). CMC over the distinct-identity list as in
    :func:`eval_sysu`; AP and INP on the kept list; queries with no relevant kept item are skipped;
    a CMC shorter than ``max_rank`` is padded with its last value.

    Returns:
        (cmc float64 (max_rank,), mAP, mINP), all fractions in [0, 1].

    Raises:
        ValueError: on mismatched shapes, NaN distances, or when no query is valid.
    """
    d, a = _with_cameras(distmat, q_pids, g_pids, max_rank, q_camids, g_camids, "eval_llcm (LLCM cameras 1..9)")
    cams = (a["q_camids"].reshape(-1), a["g_camids"].reshape(-1))
    return _summarise(_query_stats(d, a["q_pids"], a["g_pids"], True, cams=cams), max_rank)


# The protocol metrics by the removal rule a dataset spec names (data.specs.REMOVE_*).
_BY_REMOVAL = {"none": lambda d, qp, gp, qc, gc, r: eval_regdb(d, qp, gp, r),
               "sysu_same_room": eval_sysu, "same_id_same_camera": eval_llcm}


def eval_protocol(removal: str, distmat, q_pids, g_pids, q_camids=None, g_camids=None,
                  max_rank: int = 20) -> Tuple[np.ndarray, float, float]:
    """The metric of a dataset, chosen by its spec's removal rule: ``"none"`` (:func:`eval_regdb`),
    ``"sysu_same_room"`` (:func:`eval_sysu`) or ``"same_id_same_camera"`` (:func:`eval_llcm`).
    Arguments and result as those functions (cameras are ignored by ``"none"``)."""
    if removal not in _BY_REMOVAL:
        raise ValueError(f"removal must be one of {sorted(_BY_REMOVAL)}, got {removal!r}")
    return _BY_REMOVAL[removal](distmat, q_pids, g_pids, q_camids, g_camids, max_rank)


def kept_gallery(removal: str, q_pid, q_camid, g_pids, g_camids) -> np.ndarray:
    """Boolean (G,) mask of the gallery items one query may match under ``removal`` (see eval_protocol)."""
    g_cams = np.asarray(g_camids).reshape(-1)
    if removal == "sysu_same_room":
        return sysu_kept_gallery(q_camid, g_cams)
    if removal == "same_id_same_camera":
        return ~((np.asarray(g_pids).reshape(-1) == q_pid) & (g_cams == int(q_camid)))
    if removal == "none":
        return np.ones(g_cams.shape, bool)
    raise ValueError(f"removal must be one of {sorted(_BY_REMOVAL)}, got {removal!r}")


def sysu_kept_gallery(q_camid: int, g_camids: np.ndarray) -> np.ndarray:
    """Boolean (G,) mask of the gallery items a SYSU query from camera ``q_camid`` may match.

    Everything is kept except camera-2 items for a camera-3 query (method.md H.2).
    """
    g = np.asarray(g_camids).reshape(-1)
    if int(q_camid) == _SYSU_IR_CAM:
        return g != _SYSU_SAME_ROOM_CAM
    return np.ones(g.shape, bool)


__all__ = ["eval_sysu", "eval_regdb", "eval_llcm", "eval_protocol", "kept_gallery", "stable_argsort",
           "sysu_kept_gallery"]
