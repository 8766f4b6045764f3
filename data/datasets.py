"""One entry point for every dataset: training lists, the test protocol's query/gallery splits,
counts and image listings.

Callers pass the dataset name once; everything dataset-specific is dispatched here (through
:data:`READERS`, keyed like :data:`data.specs.SPECS`) and described in :mod:`data.specs`, so
pipelines never branch on the name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import llcm, regdb, sysu
from .sample import DataError, Sample, TestSplit, pids_of
from .specs import SPECS, DatasetSpec, resolve_directions

__all__ = ["DATASETS", "READERS", "TestSplit", "check_trial", "trial_numbers", "check_root", "check_dataset",
           "load_train", "load_protocols", "load_test_splits", "dataset_counts", "image_paths"]

DATASETS = tuple(SPECS)


@dataclass(frozen=True)
class Reader:
    """The functions that read one dataset's raw layout.

    Attributes:
        check_root: root -> absolute root, or DataError naming what is missing.
        check_trial: --trial value -> int (datasets with trials) or None.
        train: (root, trial) -> (rgb, ir) training Samples.
        protocols: (root, trial, modes, shot, gallery_trials, [(direction index, name)]) ->
            {protocol name: [TestSplit, ...]}.
        counts: (root, trial) -> {count name: value} (scripts/inspect_dataset.py).
        image_paths: (root, trial or "all") -> every image path the readers can return.
        trials: the training splits a run can name with --trial (RegDB 1..10; empty: one split).
    """

    check_root: Callable[[str], str]
    check_trial: Callable[[object], Optional[int]]
    train: Callable[..., Tuple[List[Sample], List[Sample]]]
    protocols: Callable[..., Dict[str, List[TestSplit]]]
    counts: Callable[..., Dict[str, int]]
    image_paths: Callable[..., List[str]]
    trials: Tuple[int, ...] = ()


def _no_trial(trial) -> None:
    """Datasets with one split ignore --trial."""
    return None


READERS: Dict[str, Reader] = {
    "sysu": Reader(sysu.check_sysu_root, _no_trial, lambda root, trial: sysu.sysu_train(root),
                   sysu.sysu_protocols, sysu.sysu_counts, sysu.sysu_image_paths),
    "regdb": Reader(regdb.check_regdb_root, regdb.check_regdb_trial,
                    lambda root, trial: regdb.regdb_split(root, regdb.check_regdb_trial(trial), "train"),
                    regdb.regdb_protocols, regdb.regdb_counts, regdb.regdb_image_paths, regdb.TRIALS),
    "llcm": Reader(llcm.check_llcm_root, _no_trial, llcm.llcm_train, llcm.llcm_protocols, llcm.llcm_counts,
                   llcm.llcm_image_paths),
}


def _spec_and_reader(dataset: str) -> Tuple[DatasetSpec, Reader]:
    if dataset not in SPECS:
        raise DataError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
    return SPECS[dataset], READERS[dataset]


def check_trial(dataset: str, trial) -> Optional[int]:
    """Validate ``--trial``: RegDB needs 1..10 (returned as int); SYSU and LLCM have no trials (None)."""
    return _spec_and_reader(dataset)[1].check_trial(trial)


def trial_numbers(dataset: str) -> Tuple[int, ...]:
    """Every value of --trial for ``dataset`` (what ``--trial all`` stands for); empty without trials."""
    return _spec_and_reader(dataset)[1].trials


def check_root(dataset: str, root: str) -> str:
    """Check that ``root`` exists and looks like ``dataset``; return it as an absolute path.

    Raises:
        DataError: e.g. "expected cam1..cam6 and exp/ under ...; see README 'Preparing data'".
    """
    return _spec_and_reader(dataset)[1].check_root(root)


def load_train(dataset: str, root: str, trial=None) -> Tuple[List[Sample], List[Sample]]:
    """Training images as (rgb, ir) Sample lists (SYSU train ∪ val; RegDB ``train_*_{trial}``; LLCM
    ``idx/train_{vis,nir}.txt``)."""
    reader = _spec_and_reader(dataset)[1]
    root = reader.check_root(root)
    return reader.train(root, check_trial(dataset, trial))


def load_protocols(dataset: str, root: str, trial=None, modes: Sequence[str] = ("all",), shot: int = 1,
                   gallery_trials: Optional[int] = None,
                   directions: Optional[Sequence[str]] = None) -> Dict[str, List[TestSplit]]:
    """The evaluation protocols (method.md H.2, H.3; dataset_layouts.md section 4) as
    ``{protocol name: [TestSplit, ...]}``; a protocol's metrics are the mean over its splits.

    SYSU: one protocol per mode (``all-search``/``indoor-search``) with ``gallery_trials`` random
    galleries each. RegDB: one protocol per direction of trial ``trial``, one split each. LLCM: one
    protocol per direction (``visible2infrared``, ``infrared2visible``) with ``gallery_trials`` random
    galleries each.

    Args:
        modes: search modes (must be among the spec's ``eval_modes``).
        shot: gallery images per (identity, camera) (among the spec's ``shots``).
        gallery_trials: random gallery samplings (default: the spec's; ignored without sampling).
        directions: direction names (the spec's own or the generic ``visible2thermal``/``thermal2visible``);
            default every direction of the dataset; ignored for SYSU.

    Raises:
        DataError: a mode, shot, gallery count or direction the dataset does not have, or a broken layout.
    """
    spec, reader = _spec_and_reader(dataset)
    root = reader.check_root(root)
    for mode in modes:
        if mode not in spec.eval_modes:
            raise DataError(f"--mode {mode} is not a {spec.display_name} search mode; it has {list(spec.eval_modes)}")
    if shot not in spec.shots:
        raise DataError(f"--shot must be one of {spec.shots} for {spec.display_name}, got {shot!r}")
    trials = spec.gallery_trials if gallery_trials is None else int(gallery_trials)
    if trials < 1:
        raise DataError(f"the number of gallery trials must be at least 1, got {gallery_trials}")
    chosen = [(i, spec.directions[i]) for i in resolve_directions(spec, directions)] if spec.directions else []
    protocols = reader.protocols(root, trial, tuple(modes), shot, trials, chosen)
    for name, splits in protocols.items():
        _check_reachable(spec, root, trial, name, splits[0])
    return protocols


def _check_reachable(spec: DatasetSpec, root: str, trial, name: str, split: TestSplit) -> None:
    """Some query identity must appear in the gallery, else no query can be scored (the metric would fail
    after the whole feature extraction)."""
    if not len(split.query) or not len(split.gallery) or not np.isin(pids_of(split.query), pids_of(split.gallery)).any():
        lists = spec.test_lists.format(trial=trial)
        raise DataError(f"{spec.display_name} {name}: no query identity appears in the gallery ({len(split.query)} "
                        f"queries, {len(split.gallery)} gallery images); check the labels of {lists} under {root}")


def check_dataset(dataset: str, root: str, trial=None) -> None:
    """Before training: every protocol list resolvable (each search mode and direction, one gallery
    sampling), some query of each reachable, and no image both a training and a test image.

    Raises:
        DataError: naming the lists at fault.
    """
    spec, reader = _spec_and_reader(dataset)
    root = reader.check_root(root)
    protocols = load_protocols(dataset, root, trial, spec.eval_modes, 1, 1)
    tests = {s.path for splits in protocols.values() for split in splits for s in (*split.query, *split.gallery)}
    rgb, ir = load_train(dataset, root, trial)
    both = [s.path for s in (*rgb, *ir) if s.path in tests]
    if both:
        raise DataError(f"{len(both)} images are both training and test images (first: {both[0]}); the lists "
                        f"{spec.train_lists.format(trial=trial)} and {spec.test_lists.format(trial=trial)} under "
                        f"{root} must not overlap")


def load_test_splits(dataset: str, root: str, trial=None, mode: str = "all", shot: int = 1,
                     gallery_trials: Optional[int] = 10,
                     directions: Optional[Sequence[str]] = None) -> List[TestSplit]:
    """The splits of :func:`load_protocols` for one ``mode``, as one list in protocol order.

    SYSU: ``trial0``.. sharing one query list; RegDB: one split per direction, named after it;
    LLCM: ``trial0``.. of each direction in turn (so names repeat across directions).
    """
    protocols = load_protocols(dataset, root, trial, (mode,), shot, gallery_trials, directions)
    return [split for splits in protocols.values() for split in splits]


def dataset_counts(dataset: str, root: str, trial=None) -> Dict[str, int]:
    """Image and identity counts of the layout at ``root`` (every reader runs, so a broken layout raises)."""
    spec, reader = _spec_and_reader(dataset)
    return reader.counts(reader.check_root(root), check_trial(dataset, trial))


def image_paths(dataset: str, root: str, trial="all") -> List[str]:
    """Every image path the readers can return for ``dataset`` (deduplicated, reader order).

    SYSU: train ∪ val (rgb, ir), the query set and every gallery candidate of the test ids.
    RegDB: the train and test lists of ``trial`` (1..10), or with ``"all"`` of every trial whose
    ``idx/train_visible_<t>.txt`` exists (a partial copy of RegDB can still be checked or cached).
    LLCM: both training lists and every test image of the test ids.
    """
    reader = _spec_and_reader(dataset)[1]
    return reader.image_paths(reader.check_root(root), trial)
