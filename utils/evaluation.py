"""The test protocols of method.md H, run on a model: SYSU-MM01 (all/indoor, 10 gallery trials)
and RegDB (visible->thermal, thermal->visible)."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from data.datasets import TestSplit, load_test_splits
from data.sample import cams_of, pids_of
from utils.features import extract_features
from utils.metrics import eval_regdb, eval_sysu

RANKS = (1, 5, 10, 20)


def split_metrics(dataset: str, split: TestSplit, q_feat: torch.Tensor, g_feat: torch.Tensor):
    """Metrics of one query/gallery split from L2-normalised features (Q,D), (G,D).

    Returns (metrics dict in percent, distmat (Q,G) float64 with smaller = closer).
    """
    distmat = -(q_feat.double() @ g_feat.double().T).numpy()
    q_pids, g_pids = pids_of(split.query), pids_of(split.gallery)
    if dataset == "sysu":
        cmc, mAP, mINP = eval_sysu(distmat, q_pids, g_pids, cams_of(split.query), cams_of(split.gallery))
    else:
        cmc, mAP, mINP = eval_regdb(distmat, q_pids, g_pids)
    metrics = {f"r{r}": 100.0 * float(cmc[r - 1]) for r in RANKS if r <= len(cmc)}
    metrics.update(mAP=100.0 * float(mAP), mINP=100.0 * float(mINP))
    return metrics, distmat


def summarize(per_split: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Mean and (population) standard deviation of every metric over the splits."""
    keys = next(iter(per_split.values())).keys()
    table = {k: np.array([m[k] for m in per_split.values()]) for k in keys}
    return {"mean": {k: float(v.mean()) for k, v in table.items()},
            "std": {k: float(v.std()) for k, v in table.items()}}


def _protocols(dataset: str, data_dir: str, trial, modes, shot: int, gallery_trials: int,
               directions) -> Dict[str, List[TestSplit]]:
    if dataset == "sysu":
        return {f"{mode}-search": load_test_splits("sysu", data_dir, mode=mode, shot=shot,
                                                   gallery_trials=gallery_trials) for mode in modes}
    splits = load_test_splits("regdb", data_dir, trial=trial, directions=tuple(directions))
    return {s.name: [s] for s in splits}


def evaluate(model, dataset: str, data_dir: str, *, device: torch.device, trial: Optional[int] = None,
             modes=("all",), shot: int = 1, gallery_trials: int = 10,
             directions=("visible2thermal", "thermal2visible"), img_h: int = 288, img_w: int = 144,
             cache=None, batch_size: int = 128, workers: int = 2, flip: bool = False, amp: bool = False,
             keep_distmats: bool = False, progress: bool = True) -> Dict:
    """Run the test protocol and return ``{protocol: {"splits": {...}, "mean": {...}, "std": {...}}}``.

    Every distinct test image is embedded once (SYSU galleries of different trials share images).
    Metrics are in percent: r1, r5, r10, r20, mAP, mINP. With ``keep_distmats`` each protocol also
    holds ``"_splits"`` (TestSplit objects) and ``"_distmats"`` for visualisation.
    """
    protocols = _protocols(dataset, data_dir, trial, modes, shot, gallery_trials, directions)
    every = {s.path: s for splits in protocols.values() for sp in splits for s in sp.query + sp.gallery}
    feats: Dict[str, torch.Tensor] = {}
    for modality in ("rgb", "ir"):
        samples = [s for s in every.values() if s.modality == modality]
        if samples:
            f = extract_features(model, samples, device=device, img_h=img_h, img_w=img_w, cache=cache,
                                 batch_size=batch_size, workers=workers, flip=flip, amp=amp,
                                 desc=f"test {modality}", progress=progress)
            feats.update(zip((s.path for s in samples), f))
    results = {}
    for name, splits in protocols.items():
        per_split, distmats = {}, []
        for sp in splits:
            q = torch.stack([feats[s.path] for s in sp.query])
            g = torch.stack([feats[s.path] for s in sp.gallery])
            per_split[sp.name], dm = split_metrics(dataset, sp, q, g)
            distmats.append(dm if keep_distmats else None)
        results[name] = {"splits": per_split, **summarize(per_split)}
        if keep_distmats:
            results[name].update(_splits=splits, _distmats=distmats)
    return results


def format_results(results: Dict) -> List[str]:
    """Human-readable lines: one per split and a mean ± std line per protocol."""
    lines = []
    for name, res in results.items():
        for split, m in res["splits"].items():
            lines.append(f"{name} {split}: " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()))
        mean, std = res["mean"], res["std"]
        lines.append(f"{name} MEAN: " + "  ".join(f"{k} {mean[k]:.2f}±{std[k]:.2f}" for k in mean))
    return lines
