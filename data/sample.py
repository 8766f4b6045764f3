"""The one sample model shared by SYSU-MM01 and RegDB.

Every image the project touches is a :class:`Sample`: where it is, which modality and camera took
it, and its ground-truth identity. Ground truth is only used for evaluation and for optional
diagnostics (ARI); training always uses pseudo-labels, which are attached by image path
(see :func:`utils.artifacts.align_to_samples`), never by list position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

RGB = "rgb"
IR = "ir"
MODALITIES = (RGB, IR)


class DataError(Exception):
    """Bad input data or flags. The message names the file or flag and says what to do.

    Entry points catch it and print a one-line error (exit status 2) instead of a traceback.
    """


@dataclass(frozen=True)
class Sample:
    """One image.

    Attributes:
        path: absolute path of the image file on disk (the key that pseudo-labels are attached by).
        pid: ground-truth person id as the dataset names it (SYSU folder id, RegDB idx label).
        cam: camera id (SYSU 1..6; RegDB 1 = visible, 2 = thermal).
        modality: ``"rgb"`` or ``"ir"``.
    """

    path: str
    pid: int
    cam: int
    modality: str

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")


def paths_of(samples: Sequence[Sample]) -> List[str]:
    """The image paths of ``samples``, in order."""
    return [s.path for s in samples]


def pids_of(samples: Sequence[Sample]) -> np.ndarray:
    """Ground-truth ids of ``samples`` as an int64 array of shape (N,)."""
    return np.fromiter((s.pid for s in samples), dtype=np.int64, count=len(samples))


def cams_of(samples: Sequence[Sample]) -> np.ndarray:
    """Camera ids of ``samples`` as an int64 array of shape (N,)."""
    return np.fromiter((s.cam for s in samples), dtype=np.int64, count=len(samples))

