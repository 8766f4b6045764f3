"""Every difference between SYSU-MM01 and RegDB, written once.

Entry scripts and pipelines never branch on the dataset name; they read a :class:`DatasetSpec`.
Values are the released code's (method.md D.1, H).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class DatasetSpec:
    """Per-dataset constants.

    Attributes:
        name: ``"sysu"`` or ``"regdb"``.
        eps: DBSCAN radius on the Jaccard distance (method.md D.1).
        k1, k2: intra-modality Jaccard parameters.
        k1_joint, k2_joint: modality-balanced Jaccard parameters of the joint phase (D.3).
        iters: stage-1 iterations per epoch (released README).
        has_trials: RegDB needs ``--trial 1..10`` (one training run per split).
        eval_modes: SYSU search modes; RegDB has none.
        gallery_trials: number of random gallery samplings in the test protocol (SYSU 10, RegDB 1).
    """

    name: str
    eps: float
    k1: int
    k2: int
    k1_joint: int
    k2_joint: int
    iters: int
    has_trials: bool
    eval_modes: Tuple[str, ...]
    gallery_trials: int


SPECS = {
    "sysu": DatasetSpec(name="sysu", eps=0.6, k1=30, k2=6, k1_joint=40, k2_joint=32, iters=200,
                        has_trials=False, eval_modes=("all", "indoor"), gallery_trials=10),
    "regdb": DatasetSpec(name="regdb", eps=0.3, k1=30, k2=6, k1_joint=38, k2_joint=18, iters=100,
                         has_trials=True, eval_modes=("all",), gallery_trials=1),
}


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` for ``name`` (``"sysu"`` or ``"regdb"``)."""
    from .sample import DataError

    try:
        return SPECS[name]
    except KeyError:
        raise DataError(f"--dataset must be one of {sorted(SPECS)}, got {name!r}") from None
