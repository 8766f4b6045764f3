"""The test protocols of method.md H and dataset_layouts.md section 4, run on a model: SYSU-MM01
(all/indoor, 10 gallery trials), RegDB (visible->thermal, thermal->visible) and LLCM (both
directions, 10 gallery trials). What differs between datasets comes from :mod:`data.specs`; the
query/gallery lists from :func:`data.datasets.load_protocols`.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from data.datasets import TestSplit, load_protocols
from data.sample import cams_of, pids_of
from data.specs import SPECS
from utils.evaluation.features import extract_features
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


def protocol_features(model, protocols: Dict[str, List[TestSplit]], *, device: torch.device, img_h: int = 288,
                      img_w: int = 144, cache=None, batch_size: int = 128, workers: int = 2, flip: bool = False,
                      amp: bool = False, progress: bool = True) -> Dict[str, torch.Tensor]:
    """``{path: (D,) float32 feature on the CPU}`` of every distinct test image of ``protocols``, each
    embedded once through its modality's stem (the galleries of different trials and directions share
    images). ``img_h, img_w``: input size; other arguments as :func:`extract_features`."""
    every = {s.path: s for splits in protocols.values() for sp in splits for s in sp.query + sp.gallery}
    feats: Dict[str, torch.Tensor] = {}
    for modality in ("rgb", "ir"):
        samples = [s for s in every.values() if s.modality == modality]
        if samples:
            f = extract_features(model, samples, device=device, img_h=img_h, img_w=img_w, cache=cache,
                                 batch_size=batch_size, workers=workers, flip=flip, amp=amp,
                                 desc=f"test {modality}", progress=progress)
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


def evaluate(model, dataset: str, data_dir: str, *, device: torch.device, trial: Optional[int] = None,
             modes=("all",), shot: int = 1, gallery_trials: Optional[int] = None, directions=None,
             img_h: int = 288, img_w: int = 144, cache=None, batch_size: int = 128, workers: int = 2,
             flip: bool = False, amp: bool = False, keep_distmats: bool = False, progress: bool = True) -> Dict:
    """Run the test protocol and return ``{protocol: {"splits": {...}, "mean": {...}, "std": {...}}}``.

    Protocols and their options as :func:`data.datasets.load_protocols` (``gallery_trials`` None = the
    dataset's, ``directions`` None = all of them). Metrics are in percent: r1, r5, r10, r20, mAP, mINP.
    With ``keep_distmats`` each protocol also holds ``"_splits"`` and ``"_distmats"`` ((Q, G) float64 per
    split) for visualisation. ``model`` maps (B, 3, img_h, img_w) batches to (B, D) features.
    """
    protocols = load_protocols(dataset, data_dir, trial=trial, modes=tuple(modes), shot=shot,
                               gallery_trials=gallery_trials, directions=directions)
    feats = protocol_features(model, protocols, device=device, img_h=img_h, img_w=img_w, cache=cache,
                              batch_size=batch_size, workers=workers, flip=flip, amp=amp, progress=progress)
    return score_protocols(dataset, protocols, feats, keep_distmats=keep_distmats)


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
