"""The one sample model shared by SYSU-MM01, RegDB and LLCM.

Every image the project touches is a :class:`Sample`: where it is, which modality and camera took
it, and its ground-truth identity. Ground truth is only used for evaluation and for optional
diagnostics (ARI); training always uses pseudo-labels, which are attached by image path
(see :func:`utils.artifacts.align_to_samples`), never by list position.
"""
from __future__ import annotations

import os
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


LAYOUT_HINT = "see README 'Preparing data'"


def check_folders(root: str, names: Sequence[str], expected: str) -> str:
    """Check that the dataset root ``root`` exists and holds the folders ``names``; return it absolute.

    Args:
        expected: what belongs under the root, for the message (e.g. ``"cam1..cam6 and exp/"``).

    Raises:
        DataError: naming the missing root or folder.
    """
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise DataError(f"--data-dir {root} {what}; expected {expected} under it ({LAYOUT_HINT})")
    root = os.path.abspath(root)
    for name in names:
        if not os.path.isdir(os.path.join(root, name)):
            raise DataError(f"{os.path.join(root, name)} is missing; expected {expected} under {root} "
                            f"({LAYOUT_HINT})")
    return root


@dataclass(frozen=True)
class Sample:
    """One image.

    Attributes:
        path: absolute path of the image file on disk (the key that pseudo-labels are attached by).
        pid: ground-truth person id as the dataset names it (SYSU folder id, RegDB idx label, LLCM
            training label column / test identity folder).
        cam: camera id (SYSU 1..6; RegDB 1 = visible, 2 = thermal; LLCM 1..9, shared by both modes).
        modality: ``"rgb"`` or ``"ir"``.
    """

    path: str
    pid: int
    cam: int
    modality: str

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")


@dataclass
class TestSplit:
    """One evaluation of a test protocol: rank ``gallery`` for every image of ``query``.

    Attributes:
        name: ``"trial0"``..``"trial9"`` (random gallery samplings) or the RegDB direction.
        query, gallery: the two image lists.
    """

    __test__ = False  # not a pytest test class despite the name

    name: str
    query: List[Sample]
    gallery: List[Sample]


def paths_of(samples: Sequence[Sample]) -> List[str]:
    """The image paths of ``samples``, in order."""
    return [s.path for s in samples]


def pids_of(samples: Sequence[Sample]) -> np.ndarray:
    """Ground-truth ids of ``samples`` as an int64 array of shape (N,)."""
    return np.fromiter((s.pid for s in samples), dtype=np.int64, count=len(samples))


def cams_of(samples: Sequence[Sample]) -> np.ndarray:
    """Camera ids of ``samples`` as an int64 array of shape (N,)."""
    return np.fromiter((s.cam for s in samples), dtype=np.int64, count=len(samples))

