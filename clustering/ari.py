"""Adjusted Rand index of pseudo-labels against ground truth: a diagnostic (--report-ari, the benchmarks).

ARI = (RI - E[RI]) / (max RI - E[RI]); outliers (-1) count as one extra cluster. Keys are named
``ari_<labelling>`` everywhere (metrics.jsonl, benchmark reports). A ``joint`` labelling covers the
concatenation [rgb; ir] and is scored against [truth rgb; truth ir]: ground-truth identities are shared
between the modalities, so it measures the cross-modality correspondence.
"""
from __future__ import annotations

from typing import Dict, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _flat(x: ArrayLike) -> np.ndarray:
    return np.asarray(torch.as_tensor(x).cpu()).ravel()


def pseudo_label_ari(labels: Dict[str, ArrayLike], truth: Dict[str, ArrayLike]) -> Dict[str, float]:
    """``{"ari_<key>": ARI}`` for every labelling in ``labels`` (in its order).

    Args:
        labels: ``{"rgb": (N_rgb,), "ir": (N_ir,)[, "joint": (N_rgb + N_ir,)]}`` pseudo-labels, -1 = outlier.
        truth: ``{"rgb": (N_rgb,), "ir": (N_ir,)}`` ground-truth identities.
    """
    from sklearn.metrics import adjusted_rand_score

    gt = {k: _flat(v) for k, v in truth.items()}
    gt.setdefault("joint", np.concatenate([gt["rgb"], gt["ir"]]))
    return {f"ari_{k}": float(adjusted_rand_score(gt[k], _flat(v))) for k, v in labels.items()}


def matching_ari(labels_rgb: ArrayLike, gt_rgb: ArrayLike, labels_ir: ArrayLike, gt_ir: ArrayLike) -> Dict[str, float]:
    """ARI of labels that share one label space across the modalities (after the MMLM matching):
    ``ari_rgb``, ``ari_ir`` and ``ari_joint`` of [labels_rgb; labels_ir] (all arrays 1-D)."""
    joint = np.concatenate([_flat(labels_rgb), _flat(labels_ir)])
    return pseudo_label_ari({"rgb": labels_rgb, "ir": labels_ir, "joint": joint}, {"rgb": gt_rgb, "ir": gt_ir})
