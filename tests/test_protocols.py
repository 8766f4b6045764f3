"""utils/evaluation/protocols.py: known answers for the mean ± std, the per-split metrics of each dataset's
protocol, the printed lines, and the features-once property (every distinct test image embedded once)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.datasets import load_protocols
from data.sample import IR, RGB, Sample, TestSplit, cams_of, pids_of
from utils.evaluation.features import Extraction
from utils.evaluation.metrics import eval_llcm, eval_regdb, eval_sysu
from utils.evaluation.protocols import (distance_matrix, format_results, protocol_features, score_protocols,
                                        split_metrics, summarize)


def _split(name, query, gallery):
    """A TestSplit of infrared queries and visible gallery images given as (pid, cam) pairs."""
    return TestSplit(name, [Sample(f"q{i}_{p}_{c}", p, c, IR) for i, (p, c) in enumerate(query)],
                     [Sample(f"g{i}_{p}_{c}", p, c, RGB) for i, (p, c) in enumerate(gallery)])


# ---------------------------------------------------------------- summarize

def test_summarize_is_the_mean_and_the_population_std():
    out = summarize({"trial0": {"r1": 10.0, "mAP": 1.0}, "trial1": {"r1": 20.0, "mAP": 3.0},
                     "trial2": {"r1": 30.0, "mAP": 8.0}})
    assert out["mean"] == pytest.approx({"r1": 20.0, "mAP": 4.0})
    # population std (divide by 3): sqrt(200/3) and sqrt(26/3); the sample std would be 10 and 3.61
    assert out["std"] == pytest.approx({"r1": math.sqrt(200 / 3), "mAP": math.sqrt(26 / 3)})
    assert list(out["mean"]) == ["r1", "mAP"]           # metric order kept (it is the printed order)
    one = summarize({"trial0": {"r1": 7.0}})
    assert one == {"mean": {"r1": 7.0}, "std": {"r1": 0.0}}


# ---------------------------------------------------------------- distances and per-split metrics

def test_distance_matrix_is_minus_the_inner_product_in_float64():
    q = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=1)
    g = F.normalize(torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]), dim=1)
    dm = distance_matrix(q, g)
    assert dm.shape == (2, 3) and dm.dtype == np.float64
    h = 1 / math.sqrt(2)
    np.testing.assert_allclose(dm, [[0.0, -1.0, 1.0], [-h, -h, h]], atol=1e-7)


def test_regdb_split_metrics_known_answer():
    """Query 0 (pid 1) ranks pid 2, 1, 1: AP (1/2 + 2/3) / 2, INP 2/3; query 1 (pid 2) ranks 1, 1, 2:
    AP 1/3, INP 1/3. No removal, plain CMC padded to 20."""
    split = _split("visible2thermal", [(1, 1), (2, 1)], [(1, 2), (2, 2), (1, 2)])
    dm = np.array([[0.5, 0.1, 0.9], [0.2, 0.3, 0.1]])
    metrics, cmc = split_metrics("regdb", split, dm)
    assert cmc.shape == (20,) and cmc.dtype == np.float64
    assert metrics == pytest.approx({"r1": 0.0, "r5": 100.0, "r10": 100.0, "r20": 100.0,
                                     "mAP": 100 * (7 / 12 + 1 / 3) / 2, "mINP": 50.0})
    assert list(metrics) == ["r1", "r5", "r10", "r20", "mAP", "mINP"]


def test_sysu_split_metrics_skip_camera_2_for_camera_3_queries():
    """The same gallery ranking, once from camera 3 (the nearest image, camera 2, is removed) and once
    from camera 6 (nothing removed)."""
    gallery = [(1, 2), (2, 1), (1, 1)]
    dm = np.array([[0.0, 0.1, 0.2]])
    cam3, _ = split_metrics("sysu", _split("trial0", [(1, 3)], gallery), dm)
    cam6, _ = split_metrics("sysu", _split("trial0", [(1, 6)], gallery), dm)
    assert (cam3["r1"], cam3["mAP"], cam3["mINP"]) == pytest.approx((0.0, 50.0, 50.0))     # ranks pid 2, 1
    # ranks pid 1, 2, 1: AP (1 + 2/3) / 2, INP 2 matches / last match at 3
    assert (cam6["r1"], cam6["mAP"], cam6["mINP"]) == pytest.approx((100.0, 100 * (1 + 2 / 3) / 2, 200 / 3))


@pytest.mark.parametrize("dataset, metric", [("sysu", eval_sysu), ("regdb", eval_regdb), ("llcm", eval_llcm)])
def test_split_metrics_equal_the_dataset_metric(dataset, metric):
    rng = np.random.default_rng(3)
    query = [(int(p), int(c)) for p, c in zip(rng.integers(0, 6, 30), rng.choice([3, 6], 30))]
    gallery = [(p, c) for p in range(6) for c in (1, 2, 4)]
    split = _split("trial0", query, gallery)
    dm = rng.random((30, len(gallery)))
    metrics, cmc = split_metrics(dataset, split, dm)
    q_p, g_p, q_c, g_c = pids_of(split.query), pids_of(split.gallery), cams_of(split.query), cams_of(split.gallery)
    ref = metric(dm, q_p, g_p) if metric is eval_regdb else metric(dm, q_p, g_p, q_c, g_c)
    np.testing.assert_array_equal(cmc, ref[0])
    assert metrics == pytest.approx({"r1": 100 * ref[0][0], "r5": 100 * ref[0][4], "r10": 100 * ref[0][9],
                                     "r20": 100 * ref[0][19], "mAP": 100 * ref[1], "mINP": 100 * ref[2]})


def test_score_protocols_scores_every_split_from_the_features():
    """Two gallery trials of one protocol: each split's metrics are eval_sysu of -<q, g>, the mean and std
    are summarize's, ``_cmcs`` has one curve per split, distances are kept only when asked for."""
    rng = np.random.default_rng(0)
    q_list = [(int(p), 3 + 3 * int(rng.integers(2))) for p in rng.integers(0, 4, 12)]
    splits = [_split(f"trial{t}", q_list, [(p, c) for p in range(4) for c in (1, 2)][t:]) for t in range(2)]
    splits[1].gallery[:] = [Sample(s.path + "_t1", s.pid, s.cam, s.modality) for s in splits[1].gallery]
    paths = {s.path for sp in splits for s in sp.query + sp.gallery}
    feats = {p: F.normalize(torch.randn(5, generator=torch.Generator().manual_seed(i)), dim=0)
             for i, p in enumerate(sorted(paths))}
    res = score_protocols("sysu", {"all-search": splits}, feats)["all-search"]
    per_split = {}
    for sp in splits:
        q = torch.stack([feats[s.path] for s in sp.query]).double()
        g = torch.stack([feats[s.path] for s in sp.gallery]).double()
        cmc, mAP, mINP = eval_sysu(-(q @ g.T).numpy(), pids_of(sp.query), pids_of(sp.gallery),
                                   cams_of(sp.query), cams_of(sp.gallery))
        per_split[sp.name] = {"r1": 100 * cmc[0], "r5": 100 * cmc[4], "r10": 100 * cmc[9], "r20": 100 * cmc[19],
                              "mAP": 100 * mAP, "mINP": 100 * mINP}
        assert res["splits"][sp.name] == pytest.approx(per_split[sp.name])
    expected = summarize(per_split)
    assert res["mean"] == pytest.approx(expected["mean"]) and res["std"] == pytest.approx(expected["std"])
    assert len(res["_cmcs"]) == 2 and "_distmats" not in res
    kept = score_protocols("sysu", {"all-search": splits}, feats, keep_distmats=True)["all-search"]
    assert [d.shape for d in kept["_distmats"]] == [(12, 8), (12, 7)] and kept["_splits"] is splits


# ---------------------------------------------------------------- printed lines

def test_format_results_lines():
    results = {"visible2thermal": {"splits": {"trial0": {"r1": 10.0, "mAP": 1.25}, "trial1": {"r1": 20.0, "mAP": 3.0}},
                                   "mean": {"r1": 15.0, "mAP": 2.125}, "std": {"r1": 5.0, "mAP": 0.875},
                                   "_cmcs": []}}
    assert format_results(results) == ["visible2thermal trial0: r1 10.00  mAP 1.25",
                                       "visible2thermal trial1: r1 20.00  mAP 3.00",
                                       "visible2thermal MEAN: r1 15.00±5.00  mAP 2.12±0.88"]
    assert format_results(results, label="[re-ranked] ")[2] == ("[re-ranked] visible2thermal MEAN: "
                                                                "r1 15.00±5.00  mAP 2.12±0.88")
    assert format_results({}) == []


# ---------------------------------------------------------------- features once

class CountingModel(torch.nn.Module):
    """A stand-in for the two-stream network: a 3-d feature (the channel means) per image, counting the
    images each stem sees."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.seen = {RGB: 0, IR: 0}

    def forward(self, x_rgb=None, x_ir=None):
        x, modality = (x_rgb, RGB) if x_rgb is not None else (x_ir, IR)
        self.seen[modality] += len(x)
        return F.normalize(self.scale * x.mean(dim=(2, 3)) + 3.0, dim=1)


def test_protocol_features_embed_every_distinct_image_once(tiny_sysu):
    """Two modes x 3 gallery trials share query and gallery images; each distinct path is embedded once,
    through its own modality's stem."""
    protocols = load_protocols("sysu", str(tiny_sysu), modes=("all", "indoor"), gallery_trials=3)
    every = [s for sps in protocols.values() for sp in sps for s in sp.query + sp.gallery]
    distinct = {s.path: s.modality for s in every}
    assert len(every) > len(distinct)                 # the property is not trivial on this data
    model = CountingModel()
    how = Extraction(device=torch.device("cpu"), img_h=16, img_w=8, batch_size=7, workers=0, progress=False)
    feats = protocol_features(model, protocols, how)
    assert set(feats) == set(distinct)
    assert model.seen == {m: sum(v == m for v in distinct.values()) for m in (RGB, IR)}
    assert all(f.shape == (3,) and f.dtype == torch.float32 for f in feats.values())
    res = score_protocols("sysu", protocols, feats)
    assert set(res) == {"all-search", "indoor-search"} and all(len(r["splits"]) == 3 for r in res.values())
