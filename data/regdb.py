"""Reader of the raw RegDB layout (``Visible/``, ``Thermal/`` and the ``idx/*_{trial}.txt`` lists).

Each of the 10 trials is its own 206/206 person split (method.md B.2, H.3). An idx line is
``<path relative to the RegDB root> <integer label>``; the label is the identity within that list.
"""
from __future__ import annotations

import numbers
import os
from typing import Dict, List, Sequence, Tuple

from .sample import IR, LAYOUT_HINT, RGB, DataError, Sample, TestSplit, check_folders, paths_of, pids_of

TRIALS = tuple(range(1, 11))
SPLITS = ("train", "test")
RGB_CAM = 1   # visible camera
IR_CAM = 2    # thermal camera


def check_regdb_trial(trial) -> int:
    """Return ``trial`` as an int in 1..10.

    Raises:
        DataError: naming ``--trial`` if it is missing or outside 1..10.
    """
    if trial is None:
        raise DataError("--trial is required for RegDB: one of 1..10")
    value = None
    if isinstance(trial, str) and trial.strip().isdigit():
        value = int(trial)
    elif isinstance(trial, numbers.Integral) and not isinstance(trial, bool):
        value = int(trial)
    if value not in TRIALS:
        raise DataError(f"--trial must be an integer in 1..10 for RegDB, got {trial!r}")
    return value


def check_regdb_root(root: str) -> str:
    """Check that ``root`` exists and has ``idx/``; return it as an absolute path."""
    return check_folders(root, ("idx",), "Visible/, Thermal/ and idx/ (train_visible_1.txt ...)")


def read_idx(path: str, missing_hint: str = "expected idx/{train,test}_{visible,thermal}_{1..10}.txt",
             what: str = "RegDB") -> List[Tuple[str, int]]:
    """Parse one idx list (``RELPATH LABEL`` a line; RegDB and LLCM) into (relative path, label) pairs,
    in file order.

    Blank lines and Windows line ends are tolerated. ``missing_hint`` and ``what`` (the dataset's name)
    go into the error for a missing file.

    Raises:
        DataError: missing file, or a malformed line (reported as ``file:line``).
    """
    if not os.path.isfile(path):
        raise DataError(f"missing {what} index file {path}; {missing_hint} ({LAYOUT_HINT})")
    entries = []
    with open(path, "r", encoding="utf-8-sig") as f:  # an editor's byte-order mark is not part of the text
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            # rsplit keeps a path with spaces intact; the label is always the last field
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{path}:{number}: expected '<relative image path> <integer label>', "
                                f"got {line!r}")
            entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DataError(f"{what} index file {path} lists no images")
    return entries


def _read_list(root: str, split: str, kind: str, trial: int, cam: int, modality: str) -> List[Sample]:
    """Samples of ``idx/{split}_{kind}_{trial}.txt``; error if any listed image is missing."""
    path = os.path.join(root, "idx", f"{split}_{kind}_{trial}.txt")
    samples = [Sample(os.path.normpath(os.path.join(root, rel)), label, cam, modality)
               for rel, label in read_idx(path)]
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if missing:
        raise DataError(f"{len(missing)} of {len(samples)} images listed in {path} do not exist "
                        f"(first: {missing[0]}); check --data-dir points at the RegDB root")
    return samples


def regdb_split(root: str, trial: int, split: str) -> Tuple[List[Sample], List[Sample]]:
    """The visible (rgb) and thermal (ir) images of one trial's train or test list.

    Args:
        root: RegDB root holding ``idx/`` and the image folders.
        trial: 1..10.
        split: ``"train"`` or ``"test"``.

    Returns:
        (rgb, ir): Samples in idx-file order with absolute paths, pid = idx label, cam = 1 (visible)
        resp. 2 (thermal). 2,060 images per list on the real set.
    """
    trial = check_regdb_trial(trial)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = check_regdb_root(root)
    rgb = _read_list(root, split, "visible", trial, RGB_CAM, RGB)
    ir = _read_list(root, split, "thermal", trial, IR_CAM, IR)
    return rgb, ir


def regdb_protocols(root: str, trial, modes, shot, gallery_trials,
                    directions: Sequence[Tuple[int, str]]) -> Dict[str, List[TestSplit]]:
    """The test protocol of one trial (method.md H.3): one split per requested direction.

    ``directions``: (index, name) pairs, index 0 = visible queries against the thermal gallery,
    1 = the reverse; the split and the protocol are both called ``name``. RegDB galleries are the whole
    ``idx/test_*_{trial}.txt`` lists (no sampling), so ``modes``, ``shot`` and ``gallery_trials`` do not
    apply (the caller has checked them).
    """
    rgb, ir = regdb_split(root, check_regdb_trial(trial), "test")
    pairs = ((rgb, ir), (ir, rgb))
    return {name: [TestSplit(name, *pairs[index])] for index, name in directions}


def regdb_counts(root: str, trial) -> Dict[str, int]:
    """Image and id counts of one RegDB trial."""
    train_rgb, train_ir = regdb_split(root, trial, "train")
    test_rgb, test_ir = regdb_split(root, trial, "test")

    def n_ids(*lists):
        return len(set().union(*(set(pids_of(x).tolist()) for x in lists)))
    return {"train_rgb_images": len(train_rgb), "train_ir_images": len(train_ir),
            "test_rgb_images": len(test_rgb), "test_ir_images": len(test_ir),
            "train_ids": n_ids(train_rgb, train_ir), "test_ids": n_ids(test_rgb, test_ir)}


def regdb_image_paths(root: str, trial="all") -> List[str]:
    """The images of the train and test lists of ``trial`` (1..10), or with ``"all"`` of every trial
    whose ``idx/train_visible_<t>.txt`` exists (a partial copy of RegDB can still be checked or cached)."""
    if trial == "all":
        trials = [t for t in TRIALS if os.path.isfile(os.path.join(root, "idx", f"train_visible_{t}.txt"))]
        if not trials:
            raise DataError(f"no idx/train_visible_<t>.txt under {root}; is --data-dir the RegDB root?")
    else:
        trials = [check_regdb_trial(trial)]
    paths: List[str] = []
    for t in trials:
        for split in SPLITS:
            rgb, ir = regdb_split(root, t, split)
            paths += paths_of(rgb) + paths_of(ir)
    return list(dict.fromkeys(paths))
