"""The test protocols of method.md H and dataset_layouts.md section 4, run on a model: SYSU-MM01
(all/indoor, 10 gallery trials), RegDB (visible->thermal, thermal->visible) and LLCM (both
directions, 10 gallery trials). What differs between datasets comes from :mod:`data.specs`; the
query/gallery lists from :func:`data.datasets.load_protocols`.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch

from data.datasets import TestSplit, load_protocols
from data.sample import cams_of, pids_of
from data.specs import SPECS
from utils.evaluation.features import Extraction, extract_features
from utils.settings import TEST_INTERPOLATION, EvalSettings
from utils.evaluation.metrics import eval_protocol

RANKS = (1, 5, 10, 20)


def distance_matrix(q_feat: torch.Tensor, g_feat: torch.Tensor, rerank=None) -> np.ndarray:
    """(Q, G) float64 distances, smaller = closer, from L2-normalised features (Q,D), (G,D).

    Plain: -<q, g> (the released ranking by descending similarity). With ``rerank`` (a
    :class:`clustering.rerank.RerankParams`): the k-reciprocal re-ranked distance.
    """
    if rerank is not None:
        from clustering.rerank import rerank_distance

        return rerank_distance(q_feat, g_feat, rerank)
    return -(q_feat.double() @ g_feat.double().T).numpy()


def split_metrics(dataset: str, split: TestSplit, distmat: np.ndarray):
    """Metrics of one query/gallery split under the dataset's protocol (removal rule, CMC kind).

    ``distmat``: (Q, G) float64 distances of ``split.query`` (Q images) to ``split.gallery`` (G images),
    smaller = closer. Returns (metrics dict in percent: r1, r5, r10, r20, mAP, mINP; cmc float64 (20,) fractions).
    """
    spec = SPECS[dataset]
    q_cams, g_cams = (cams_of(split.query), cams_of(split.gallery)) if spec.uses_cameras else (None, None)
    cmc, mAP, mINP = eval_protocol(spec.removal, distmat, pids_of(split.query), pids_of(split.gallery),
                                   q_cams, g_cams, max_rank=max(RANKS))
    metrics = {f"r{r}": 100.0 * float(cmc[r - 1]) for r in RANKS if r <= len(cmc)}
    metrics.update(mAP=100.0 * float(mAP), mINP=100.0 * float(mINP))
    return metrics, cmc


def summarize(per_split: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Mean and (population) standard deviation of every metric over the splits."""
    keys = next(iter(per_split.values())).keys()
    table = {k: np.array([m[k] for m in per_split.values()]) for k in keys}
    return {"mean": {k: float(v.mean()) for k, v in table.items()},
            "std": {k: float(v.std()) for k, v in table.items()}}


def protocol_features(model, protocols: Dict[str, List[TestSplit]], how: Extraction) -> Dict[str, torch.Tensor]:
    """``{path: (D,) float32 feature on the CPU}`` of every distinct test image of ``protocols``, each
    embedded once through its modality's stem (the galleries of different trials and directions share
    images)."""
    every = {s.path: s for splits in protocols.values() for sp in splits for s in sp.query + sp.gallery}
    feats: Dict[str, torch.Tensor] = {}
    for modality in ("rgb", "ir"):
        samples = [s for s in every.values() if s.modality == modality]
        if samples:
            f = extract_features(model, samples, how, desc=f"test {modality}")
            feats.update(zip((s.path for s in samples), f))
    return feats


def score_protocols(dataset: str, protocols: Dict[str, List[TestSplit]], feats: Dict[str, torch.Tensor],
                    rerank=None, keep_distmats: bool = False) -> Dict:
    """``{protocol: {"splits": {split: metrics}, "mean": {...}, "std": {...}, "_cmcs": [...]}}``.

    ``feats``: ``{path: (D,) feature}`` (:func:`protocol_features`), L2-normalised. ``_cmcs`` holds the
    (20,) float64 CMC of every split (for the mean CMC curve); with ``keep_distmats`` each protocol also
    holds ``"_splits"`` (TestSplit objects) and ``"_distmats"`` ((Q, G) float64 each). Keys starting with
    ``_`` are for pictures only and are left out of result files. ``rerank``: see :func:`distance_matrix`.
    """
    results = {}
    for name, splits in protocols.items():
        per_split, distmats, cmcs = {}, [], []
        for sp in splits:
            q = torch.stack([feats[s.path] for s in sp.query])
            g = torch.stack([feats[s.path] for s in sp.gallery])
            dm = distance_matrix(q, g, rerank)
            per_split[sp.name], cmc = split_metrics(dataset, sp, dm)
            distmats.append(dm if keep_distmats else None)
            cmcs.append(cmc)
        results[name] = {"splits": per_split, **summarize(per_split), "_cmcs": cmcs}
        if keep_distmats:
            results[name].update(_splits=splits, _distmats=distmats)
    return results


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns: the plain results and, with re-ranking, the re-ranked ones (else None),
    each ``{protocol: {"splits": {...}, "mean": {...}, "std": {...}, "_cmcs": [...]}}``."""

    results: Dict
    reranked: Optional[Dict]


def evaluate(model, settings: EvalSettings, device: torch.device, cache=None, amp: Optional[torch.dtype] = None,
             progress: bool = True, keep_distmats: bool = False, rerank=None) -> Evaluation:
    """Run the test protocol of ``settings`` (both stages' per-epoch evaluation and test.py).

    Protocols as :func:`data.datasets.load_protocols` gives them for ``settings``; test images are
    resized with the Lanczos filter (``cache``: the matching pre-resized cache or None) and embedded once.
    Metrics are in percent: r1, r5, r10, r20, mAP, mINP. ``keep_distmats``: see :func:`score_protocols`;
    ``rerank`` (a :class:`clustering.rerank.RerankParams`): also score the re-ranked distances from the
    same features. ``model`` maps (B, 3, img_h, img_w) batches to (B, D) features.
    """
    s = settings
    protocols = load_protocols(s.dataset, s.data_dir, trial=s.trial, modes=tuple(s.modes), shot=s.shot,
                               gallery_trials=s.gallery_trials, directions=s.directions)
    how = Extraction(device=device, img_h=s.img_h, img_w=s.img_w, interpolation=TEST_INTERPOLATION, cache=cache,
                     batch_size=s.batch_size, workers=s.workers, flip=s.flip, amp=amp, progress=progress)
    feats = protocol_features(model, protocols, how)
    results = score_protocols(s.dataset, protocols, feats, keep_distmats=keep_distmats)
    reranked = None if rerank is None else score_protocols(s.dataset, protocols, feats, rerank=rerank)
    return Evaluation(results, reranked)


def mean_lines(results: Dict) -> List[str]:
    """The mean ± std line of every protocol (what a training run logs after an evaluation)."""
    return [line for line in format_results(results) if " MEAN: " in line]


def format_results(results: Dict, label: str = "") -> List[str]:
    """Human-readable lines of :func:`score_protocols` results: one per split and a mean ± std line per
    protocol, each prefixed by ``label`` (e.g. ``"[re-ranked] "``)."""
    lines = []
    for name, res in results.items():
        for split, m in res["splits"].items():
            lines.append(f"{label}{name} {split}: " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()))
        mean, std = res["mean"], res["std"]
        lines.append(f"{label}{name} MEAN: " + "  ".join(f"{k} {mean[k]:.2f}±{std[k]:.2f}" for k in mean))
    return lines
