"""Known-answer and equivalence tests for utils/evaluation/metrics.py (method.md H).

Positions below are 1-based ranks in the (kept) ranked gallery list.
AP = (1/R) * sum_{relevant k} (#relevant in top k) / k,  INP = R / (last relevant position).
"""
import numpy as np
import pytest

from utils.evaluation import metrics
from utils.evaluation.metrics import eval_regdb, eval_sysu, stable_argsort


def ref_eval(distmat, q_pids, g_pids, q_camids=None, g_camids=None, max_rank=20, distinct=False):
    """Straightforward per-query reference, written from the protocol text (loops on purpose)."""
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = [int(g) for g in np.argsort(distmat[i], kind="stable")]
        if q_camids is not None:                       # SYSU: cam-3 query never sees cam 2
            order = [g for g in order if not (q_camids[i] == 3 and g_camids[g] == 2)]
        ids = [g_pids[g] for g in order]
        rel = [pid == q_pids[i] for pid in ids]
        num_rel = sum(rel)
        if num_rel == 0:
            continue
        if distinct:
            seen = []
            for pid in ids:
                if pid not in seen:
                    seen.append(pid)
            hit = seen.index(q_pids[i]) + 1
        else:
            hit = rel.index(True) + 1
        cmcs.append([1.0 if k >= hit else 0.0 for k in range(1, max_rank + 1)])
        found, total = 0, 0.0
        for k, r in enumerate(rel, start=1):
            if r:
                found += 1
                total += found / k
        aps.append(total / num_rel)
        inps.append(num_rel / max(k for k, r in enumerate(rel, start=1) if r))
    if not cmcs:
        raise ValueError("no valid query")
    return np.mean(np.asarray(cmcs), axis=0), float(np.mean(aps)), float(np.mean(inps))


# ---------------------------------------------------------------- RegDB / standard CMC
# gallery pids   [2,   1,   3,   1,   1  ]
# q0 pid 1, d = [0.1, 0.2, 0.3, 0.4, 0.5] -> ranked ids 2,1,3,1,1: relevant at 2,4,5 (R=3)
#     AP = (1/2 + 2/4 + 3/5)/3 = 8/15, INP = 3/5, first hit 2
# q1 pid 2, d = [0.9, 0.1, 0.5, 0.2, 0.3] -> ranked ids 1,1,1,3,2: relevant at 5 (R=1)
#     AP = 1/5, INP = 1/5, first hit 5 (standard); distinct list 1,3,2 -> distinct hit 3
G_PIDS = np.array([2, 1, 3, 1, 1])
Q_PIDS = np.array([1, 2])
DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],
                 [0.9, 0.1, 0.5, 0.2, 0.3]])


def test_regdb_known_answer():
    cmc, mAP, mINP = eval_regdb(DIST, Q_PIDS, G_PIDS, max_rank=5)
    np.testing.assert_allclose(cmc, [0, 0.5, 0.5, 0.5, 1.0])
    assert mAP == pytest.approx((8 / 15 + 1 / 5) / 2, abs=1e-15)     # 11/30
    assert mINP == pytest.approx((3 / 5 + 1 / 5) / 2, abs=1e-15)     # 2/5
    assert cmc.dtype == np.float64 and cmc.shape == (5,)
    assert isinstance(mAP, float) and isinstance(mINP, float)


def test_regdb_max_rank_larger_than_gallery_is_padded():
    cmc, _, _ = eval_regdb(DIST, Q_PIDS, G_PIDS, max_rank=7)         # only 5 gallery items
    np.testing.assert_allclose(cmc, [0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0])


def test_sysu_distinct_cmc_differs_from_standard_at_rank_3():
    cams_q, cams_g = np.array([6, 6]), np.ones(5, int)               # nothing removed
    cmc_s, mAP_s, mINP_s = eval_sysu(DIST, Q_PIDS, G_PIDS, cams_q, cams_g, max_rank=5)
    cmc_r, mAP_r, mINP_r = eval_regdb(DIST, Q_PIDS, G_PIDS, max_rank=5)
    # q0: distinct list 2,1,3 -> hit 2; q1: distinct list 1,3,2 -> hit 3 (standard: 5)
    np.testing.assert_allclose(cmc_s, [0, 0.5, 1.0, 1.0, 1.0])
    assert cmc_s[0] == cmc_r[0] and cmc_s[2] != cmc_r[2]
    assert (mAP_s, mINP_s) == (mAP_r, mINP_r)                         # AP/INP not deduplicated


def test_sysu_fewer_distinct_ids_than_max_rank_is_padded():
    cmc, _, _ = eval_sysu(DIST, Q_PIDS, G_PIDS, np.array([6, 6]), np.ones(5, int), max_rank=20)
    assert cmc.shape == (20,)                                         # only 3 distinct ids
    np.testing.assert_allclose(cmc, [0, 0.5] + [1.0] * 18)


# ---------------------------------------------------------------- SYSU camera rule
# idx  pid cam  dist
#  0    2   2   0.10   removed for a cam-3 query
#  1    1   2   0.20   removed for a cam-3 query (a true match!)
#  2    3   1   0.30
#  3    1   4   0.40
#  4    3   5   0.50
#  5    1   5   0.45
# cam-6 query pid 1: ranked ids 2,1,3,1,1,3 -> rel 2,4,5 (R=3): AP 8/15, INP 3/5, distinct hit 2
# cam-3 query pid 1: kept ids 3,1,1,3      -> rel 2,3   (R=2): AP (1/2+2/3)/2 = 7/12, INP 2/3,
#                    distinct list 3,1 -> hit 2
CAM_G_PIDS = np.array([2, 1, 3, 1, 3, 1])
CAM_G_CAMS = np.array([2, 2, 1, 4, 5, 5])
CAM_ROW = np.array([0.10, 0.20, 0.30, 0.40, 0.50, 0.45])


@pytest.mark.parametrize("q_cam, ap, inp", [(6, 8 / 15, 3 / 5), (3, 7 / 12, 2 / 3),
                                            (2, 8 / 15, 3 / 5)])
def test_sysu_cam3_removes_cam2(q_cam, ap, inp):
    cmc, mAP, mINP = eval_sysu(CAM_ROW[None], np.array([1]), CAM_G_PIDS, np.array([q_cam]),
                               CAM_G_CAMS, max_rank=4)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    assert mAP == pytest.approx(ap, abs=1e-15) and mINP == pytest.approx(inp, abs=1e-15)


def test_sysu_mixed_cameras_average():
    d = np.stack([CAM_ROW, CAM_ROW])
    cmc, mAP, mINP = eval_sysu(d, np.array([1, 1]), CAM_G_PIDS, np.array([3, 6]), CAM_G_CAMS,
                               max_rank=3)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mAP == pytest.approx((7 / 12 + 8 / 15) / 2, abs=1e-15)    # 67/120
    assert mINP == pytest.approx((2 / 3 + 3 / 5) / 2, abs=1e-15)     # 19/30


def test_sysu_query_whose_only_match_is_removed_is_skipped():
    # pid 2's only gallery image is idx 0 (cam 2): a cam-3 query of pid 2 has no valid match,
    # so the result equals the cam-6 pid-1 query alone.
    d = np.stack([CAM_ROW, CAM_ROW])
    got = eval_sysu(d, np.array([2, 1]), CAM_G_PIDS, np.array([3, 6]), CAM_G_CAMS, max_rank=4)
    want = eval_sysu(d[1:], np.array([1]), CAM_G_PIDS, np.array([6]), CAM_G_CAMS, max_rank=4)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:] == (pytest.approx(8 / 15), pytest.approx(3 / 5))


# ---------------------------------------------------------------- ties and skipping
def test_ties_keep_gallery_order():
    # all distances equal: stable order = gallery order.
    # pids [2,1,1], query 1 -> rel 2,3: AP (1/2 + 2/3)/2 = 7/12, INP 2/3, hit 2
    cmc, mAP, mINP = eval_regdb(np.full((1, 3), 0.5), np.array([1]), np.array([2, 1, 1]),
                                max_rank=3)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mAP == pytest.approx(7 / 12) and mINP == pytest.approx(2 / 3)
    # pids [1,1,2] -> rel 1,2: AP 1, INP 1, hit 1
    cmc, mAP, mINP = eval_regdb(np.full((1, 3), 0.5), np.array([1]), np.array([1, 1, 2]),
                                max_rank=3)
    np.testing.assert_allclose(cmc, [1, 1, 1])
    assert mAP == 1.0 and mINP == 1.0


def test_partial_ties_stable():
    # d    [0.3, 0.5, 0.5, 0.5, 0.1], pids [1, 2, 1, 3, 2], query 1
    # order idx 4,0,1,2,3 -> ids 2,1,2,1,3 -> rel 2,4: AP (1/2 + 2/4)/2 = 1/2, INP 2/4
    d = np.array([[0.3, 0.5, 0.5, 0.5, 0.1]])
    cmc, mAP, mINP = eval_regdb(d, np.array([1]), np.array([1, 2, 1, 3, 2]), max_rank=3)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mAP == pytest.approx(0.5) and mINP == pytest.approx(0.5)


def test_long_tied_row_uses_gallery_order():
    # 200 equal distances (long enough for the SIMD quicksort, whose tie order is arbitrary).
    # pids = index % 50, query 7 -> relevant indices 7, 57, 107, 157 -> positions 8, 58, 108, 158.
    g = np.arange(200) % 50
    d = np.zeros((1, 200), np.float32)
    cmc, mAP, mINP = eval_sysu(d, np.array([7]), g, np.array([6]), np.ones(200, int), max_rank=10)
    assert mAP == pytest.approx((1 / 8 + 2 / 58 + 3 / 108 + 4 / 158) / 4, abs=1e-15)
    assert mINP == pytest.approx(4 / 158, abs=1e-15)
    np.testing.assert_allclose(cmc, [0] * 7 + [1] * 3)    # ids 0..6 come first -> distinct hit 8


def test_query_without_match_is_skipped():
    d = np.vstack([DIST[:1], [[0.5, 0.4, 0.3, 0.2, 0.1]]])
    got = eval_regdb(d, np.array([1, 99]), G_PIDS, max_rank=5)       # pid 99 not in the gallery
    want = eval_regdb(DIST[:1], np.array([1]), G_PIDS, max_rank=5)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:]


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a relevant gallery item"):
        eval_regdb(DIST, np.array([7, 8]), G_PIDS)
    with pytest.raises(ValueError, match="no query"):                 # only match is on cam 2
        eval_sysu(CAM_ROW[None], np.array([2]), CAM_G_PIDS, np.array([3]), CAM_G_CAMS)


# ---------------------------------------------------------------- input handling
@pytest.mark.parametrize("args, name", [
    ((DIST, Q_PIDS[:1], G_PIDS), "q_pids"),
    ((DIST, Q_PIDS, G_PIDS[:4]), "g_pids"),
    ((DIST[0], Q_PIDS, G_PIDS), "distmat"),
])
def test_regdb_shape_errors_name_argument(args, name):
    with pytest.raises(ValueError, match=name):
        eval_regdb(*args)


def test_sysu_shape_errors_name_argument():
    with pytest.raises(ValueError, match="q_camids"):
        eval_sysu(DIST, Q_PIDS, G_PIDS, np.array([1]), np.ones(5, int))
    with pytest.raises(ValueError, match="g_camids"):
        eval_sysu(DIST, Q_PIDS, G_PIDS, np.array([1, 1]), np.ones(4, int))
    with pytest.raises(ValueError, match="max_rank"):
        eval_regdb(DIST, Q_PIDS, G_PIDS, max_rank=0)
    with pytest.raises(ValueError, match="NaN"):
        eval_regdb(np.where(DIST > 0.8, np.nan, DIST), Q_PIDS, G_PIDS)


def test_dtypes_and_torch_inputs_agree():
    torch = pytest.importorskip("torch")
    want = eval_regdb(DIST, Q_PIDS, G_PIDS, max_rank=5)
    for d in (DIST.astype(np.float32), DIST.astype(np.float16), (DIST * 100).round().astype(int)):
        got = eval_regdb(d, Q_PIDS, G_PIDS, max_rank=5)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1:] == want[1:]
    got = eval_sysu(torch.tensor(DIST), torch.tensor(Q_PIDS), torch.tensor(G_PIDS),
                    torch.tensor([6, 6]), torch.ones(5, dtype=torch.long), max_rank=5)
    np.testing.assert_allclose(got[0], [0, 0.5, 1.0, 1.0, 1.0])
    got = eval_regdb(torch.tensor(DIST).bfloat16(), torch.tensor(Q_PIDS), G_PIDS, max_rank=5)
    np.testing.assert_array_equal(got[0], want[0])


# ---------------------------------------------------------------- randomized equivalence
def _random_case(rng, num_q, num_g, num_ids, levels):
    d = rng.integers(0, levels, size=(num_q, num_g)).astype(np.float64)   # many exact ties
    q_pids = rng.integers(0, num_ids + 2, size=num_q)                     # some absent ids
    g_pids = rng.integers(0, num_ids, size=num_g)
    q_cams = rng.choice([3, 6], size=num_q)
    g_cams = rng.integers(1, 7, size=num_g)
    return d, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("block_cells", [1 << 19, 7])
def test_random_equivalence_with_reference(seed, block_cells, monkeypatch):
    monkeypatch.setattr(metrics, "_BLOCK_CELLS", block_cells)        # 7 -> one query per block
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(1, 40)), int(rng.integers(1, 60))
    case = _random_case(rng, num_q, num_g, int(rng.integers(1, 12)), int(rng.integers(1, 6)))
    d, q_pids, g_pids, q_cams, g_cams = case
    max_rank = int(rng.integers(1, 25))
    for fast, ref in ((lambda: eval_sysu(d, q_pids, g_pids, q_cams, g_cams, max_rank),
                       lambda: ref_eval(d, q_pids, g_pids, q_cams, g_cams, max_rank, True)),
                      (lambda: eval_regdb(d, q_pids, g_pids, max_rank),
                       lambda: ref_eval(d, q_pids, g_pids, max_rank=max_rank))):
        try:
            want = ref()
        except ValueError:
            with pytest.raises(ValueError):
                fast()
            continue
        got = fast()
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
        assert abs(got[1] - want[1]) <= 1e-12 and abs(got[2] - want[2]) <= 1e-12


def test_random_equivalence_long_rows():
    # rows long enough that NumPy's quicksort orders ties arbitrarily
    rng = np.random.default_rng(123)
    d, q_pids, g_pids, q_cams, g_cams = _random_case(rng, 30, 400, 20, 8)
    got, want = eval_sysu(d, q_pids, g_pids, q_cams, g_cams), \
        ref_eval(d, q_pids, g_pids, q_cams, g_cams, 20, True)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
    assert abs(got[1] - want[1]) <= 1e-12 and abs(got[2] - want[2]) <= 1e-12
    got, want = eval_regdb(d, q_pids, g_pids), ref_eval(d, q_pids, g_pids)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
    assert abs(got[1] - want[1]) <= 1e-12 and abs(got[2] - want[2]) <= 1e-12


def test_stable_argsort_matches_numpy_stable():
    rng = np.random.default_rng(0)
    for shape in [(5, 1), (7, 300), (3, 0), (20, 64)]:
        d = rng.integers(0, 4, size=shape).astype(np.float32)
        np.testing.assert_array_equal(stable_argsort(d), np.argsort(d, axis=1, kind="stable"))
