"""Diagnostics of whether the pipeline learns, against ground truth (never used for training).

* :func:`matching_accuracy` / :func:`mmlm_accuracy`: how often multi-memory matching (method E) gives a
  visible cluster an infrared partner of the same (majority) true identity;
* :func:`chance_level`: the SYSU-MM01 test metrics of random distances on the protocol's own splits.

Used by ``scripts/bench_learning.py``. Torch is imported only by the functions that need it.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from data.datasets import TestSplit, load_train
from data.sample import IR, RGB, cams_of, pids_of
from utils.artifacts import align_to_samples, load_artifact
from utils.evaluation.metrics import eval_sysu

METRICS = ("r1", "r5", "mAP", "mINP")
RULES = ("greedy", "hungarian")


def majority_ids(labels: np.ndarray, gt: np.ndarray) -> Dict[int, int]:
    """Cluster label -> most frequent true identity among its members (ties: the smallest id).

    Outliers (label -1) belong to no cluster and are left out.
    """
    labels, gt = np.asarray(labels), np.asarray(gt)
    out = {}
    for c in np.unique(labels[labels >= 0]):
        ids, counts = np.unique(gt[labels == c], return_counts=True)
        out[int(c)] = int(ids[np.argmax(counts)])
    return out


def matching_accuracy(labels_rgb, gt_rgb, labels_ir, gt_ir, partner: Dict[int, int]) -> float:
    """Share of visible clusters whose matched infrared cluster has the same majority true identity.

    Args:
        labels_*: (N_*,) cluster labels, -1 = outlier; gt_*: (N_*,) true identities.
        partner: visible cluster label -> infrared cluster label (-1 or absent: no partner, counted wrong).
    Returns:
        a fraction in [0, 1] over all visible clusters (NaN when there is none).
    """
    maj_v, maj_r = majority_ids(labels_rgb, gt_rgb), majority_ids(labels_ir, gt_ir)
    hits = [maj_r.get(partner.get(v, -1)) == pid for v, pid in maj_v.items()]
    return float(np.mean(hits)) if hits else float("nan")


def mmlm_accuracy(artifact_path: str, data_dir: str, seed: int = 0) -> Dict:
    """MMLM with each matching rule (cost ir2rgb, 4 memories) on a SYSU stage-1 artifact.

    The artifact is attached to the training samples by path (as stage 2 does); true identities come
    from the folder names. Returns ``{"num_rgb_clusters", "num_ir_clusters", "greedy": {...},
    "hungarian": {...}}`` with, per rule, ``accuracy`` (:func:`matching_accuracy`), ``ari_joint`` (ARI of
    [visible; infrared] labels after matching), ``ari_rgb`` (visible labels after matching, against
    ``ari_rgb_before``), ``ir_unmatched`` and ``rgb_shared``.
    """
    from clustering.ari import matching_ari
    from clustering.mmlm import MatchOptions, multi_memory_matching

    art, (rgb, ir) = load_artifact(artifact_path), load_train("sysu", data_dir)
    (f_rgb, l_rgb), (f_ir, l_ir) = align_to_samples(art, RGB, rgb, data_dir), align_to_samples(art, IR, ir, data_dir)
    gt_rgb, gt_ir = pids_of(rgb), pids_of(ir)
    out: Dict = {"num_rgb_clusters": int(len(np.unique(l_rgb[l_rgb >= 0]))),
                 "num_ir_clusters": int(len(np.unique(l_ir[l_ir >= 0]))),
                 "ari_rgb_before": matching_ari(l_rgb, gt_rgb, l_ir, gt_ir)["ari_rgb"]}
    for rule in RULES:
        new, info = multi_memory_matching(f_rgb, l_rgb, f_ir, l_ir, MatchOptions(matching=rule, seed=seed),
                                          device="cpu", return_info=True)
        ids_r = info["cluster_ids_ir"]
        partner = {int(v): int(ids_r[p]) if p >= 0 else -1 for v, p in zip(info["cluster_ids_rgb"], info["partner"])}
        ari = matching_ari(new, gt_rgb, l_ir, gt_ir)
        out[rule] = {"accuracy": matching_accuracy(l_rgb, gt_rgb, l_ir, gt_ir, partner),
                     "ari_joint": ari["ari_joint"], "ari_rgb": ari["ari_rgb"],
                     "ir_unmatched": int(info["ir_unmatched"]), "rgb_shared": int(info["rgb_shared"])}
    return out


def chance_level(splits: Sequence[TestSplit], draws: int = 20, seed: int = 0) -> Dict:
    """SYSU metrics (eval_sysu, in %) of uniformly random distance matrices on the given splits.

    Per split the metrics are averaged over ``draws`` random matrices; the result holds their mean and
    (population) std over the splits, as test.py reports the gallery trials, plus ``draws``.
    """
    from utils.evaluation.protocols import summarize

    rng, per_split = np.random.default_rng(seed), {}
    for sp in splits:
        ids_cams = (pids_of(sp.query), pids_of(sp.gallery), cams_of(sp.query), cams_of(sp.gallery))
        runs = []
        for _ in range(draws):
            cmc, mAP, mINP = eval_sysu(rng.random((len(sp.query), len(sp.gallery))), *ids_cams)
            runs.append([cmc[0], cmc[4], mAP, mINP])  # Rank-1, Rank-5 (cmc is padded to 20)
        per_split[sp.name] = dict(zip(METRICS, 100.0 * np.mean(runs, axis=0)))
    return {**summarize(per_split), "draws": draws}
