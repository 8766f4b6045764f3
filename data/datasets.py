"""One entry point for both datasets: training lists and the test protocol's query/gallery splits.

Callers pass the dataset name once; everything dataset-specific is dispatched here and in
:mod:`data.specs`, so pipelines never branch on the name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from . import regdb, sysu
from .sample import DataError, Sample, paths_of

DATASETS = ("sysu", "regdb")
MODES = ("all", "indoor")
SHOTS = (1, 10)
DIRECTIONS = ("visible2thermal", "thermal2visible")


@dataclass
class TestSplit:
    """One evaluation of the protocol: rank ``gallery`` for every image of ``query``.

    Attributes:
        name: ``"trial0"``..``"trial9"`` (SYSU gallery samplings) or the RegDB direction.
        query, gallery: the two image lists.
    """

    __test__ = False  # not a pytest test class despite the name

    name: str
    query: List[Sample]
    gallery: List[Sample]


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"--dataset must be one of {DATASETS}, got {dataset!r}")


def check_trial(dataset: str, trial) -> Optional[int]:
    """Validate ``--trial``: RegDB needs 1..10 (returned as int); SYSU has no trials (returns None)."""
    _check_dataset(dataset)
    if dataset == "regdb":
        return regdb.check_regdb_trial(trial)
    return None


def check_root(dataset: str, root: str) -> str:
    """Check that ``root`` exists and looks like ``dataset``; return it as an absolute path.

    Raises:
        DataError: e.g. "expected cam1..cam6 and exp/ under ...; see README 'Preparing data'".
    """
    _check_dataset(dataset)
    if dataset == "sysu":
        return sysu.check_sysu_root(root)
    return regdb.check_regdb_root(root)


def load_train(dataset: str, root: str, trial=None) -> Tuple[List[Sample], List[Sample]]:
    """Training images as (rgb, ir) Sample lists (SYSU train ∪ val; RegDB ``train_*_{trial}``)."""
    check_root(dataset, root)
    if dataset == "sysu":
        return sysu.sysu_train(root)
    return regdb.regdb_split(root, check_trial(dataset, trial), "train")


def load_test_splits(dataset: str, root: str, trial=None, mode: str = "all", shot: int = 1,
                     gallery_trials: int = 10,
                     directions: Sequence[str] = DIRECTIONS) -> List[TestSplit]:
    """The query/gallery splits of the evaluation protocol (method.md H.2, H.3).

    SYSU: ``gallery_trials`` splits ``trial0``.. sharing one query list (IR of the test ids) with a
    gallery drawn by :func:`data.sysu.sysu_gallery` for seeds 0, 1, ...; ``trial`` and ``directions``
    are ignored (SYSU is searched IR -> RGB only).
    RegDB: one split per requested direction of ``idx/test_*_{trial}.txt``:
    ``visible2thermal`` (query rgb, gallery ir) and ``thermal2visible`` (query ir, gallery rgb);
    RegDB has no gallery sampling, so ``mode`` must be "all" and ``shot`` 1, and ``gallery_trials``
    is ignored.
    """
    check_root(dataset, root)
    if mode not in MODES:
        raise DataError(f"--mode must be one of {MODES}, got {mode!r}")
    if shot not in SHOTS:
        raise DataError(f"--shot must be one of {SHOTS} (single-shot or multi-shot), got {shot!r}")
    if dataset == "sysu":
        if int(gallery_trials) < 1:
            raise DataError(f"the number of gallery trials must be at least 1, got {gallery_trials}")
        query = sysu.sysu_query(root)
        return [TestSplit(f"trial{s}", query, sysu.sysu_gallery(root, mode, shot, s))
                for s in range(int(gallery_trials))]
    if mode != "all":
        raise DataError(f"--mode {mode} applies to SYSU-MM01 only; RegDB has one search mode ('all')")
    if shot != 1:
        raise DataError(f"--shot {shot} applies to SYSU-MM01 only; RegDB galleries are not sampled")
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise DataError(f"RegDB search directions must be among {DIRECTIONS}, got {list(directions)}")
    rgb, ir = regdb.regdb_split(root, check_trial(dataset, trial), "test")
    pairs = {"visible2thermal": (rgb, ir), "thermal2visible": (ir, rgb)}
    return [TestSplit(d, *pairs[d]) for d in directions]


def image_paths(dataset: str, root: str, trial="all") -> List[str]:
    """Every image path the readers can return for ``dataset`` (deduplicated, reader order).

    SYSU: train ∪ val (rgb, ir), the query set and every gallery candidate of the test ids.
    RegDB: the train and test lists of ``trial`` (1..10), or with ``"all"`` of every trial whose
    ``idx/train_visible_<t>.txt`` exists (a partial copy of RegDB can still be checked or cached).
    """
    root = check_root(dataset, root)
    if dataset == "sysu":
        rgb, ir = sysu.sysu_train(root)
        gallery = [s for group in sysu.sysu_gallery_candidates(root, "all") for s in group]
        paths = paths_of(rgb) + paths_of(ir) + paths_of(sysu.sysu_query(root)) + paths_of(gallery)
        return list(dict.fromkeys(paths))
    if trial == "all":
        trials = [t for t in regdb.TRIALS
                  if os.path.isfile(os.path.join(root, "idx", f"train_visible_{t}.txt"))]
        if not trials:
            raise DataError(f"no idx/train_visible_<t>.txt under {root}; is --data-dir the RegDB root?")
    else:
        trials = [regdb.check_regdb_trial(trial)]
    paths = []
    for t in trials:
        for split in regdb.SPLITS:
            rgb, ir = regdb.regdb_split(root, t, split)
            paths += paths_of(rgb) + paths_of(ir)
    return list(dict.fromkeys(paths))
