"""Reader of the raw RegDB layout (``Visible/``, ``Thermal/`` and the ``idx/*_{trial}.txt`` lists).

Each of the 10 trials is its own 206/206 person split (method.md B.2, H.3). An idx line is
``<path relative to the RegDB root> <integer label>``; the label is the identity within that list.
"""
from __future__ import annotations

import numbers
import os
from typing import List, Tuple

from .sample import IR, RGB, DataError, Sample

TRIALS = tuple(range(1, 11))
SPLITS = ("train", "test")
RGB_CAM = 1   # visible camera
IR_CAM = 2    # thermal camera
LAYOUT_HINT = "see README 'Preparing data'"


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
    if not os.path.isdir(root):
        raise DataError(f"--data-dir {root} does not exist; expected Visible/, Thermal/ and idx/ under it "
                        f"({LAYOUT_HINT})")
    root = os.path.abspath(root)
    if not os.path.isdir(os.path.join(root, "idx")):
        raise DataError(f"{os.path.join(root, 'idx')} is missing; expected Visible/, Thermal/ and idx/ "
                        f"(train_visible_1.txt ...) under {root} ({LAYOUT_HINT})")
    return root


def read_idx(path: str) -> List[Tuple[str, int]]:
    """Parse one idx list into (relative path, label) pairs, in file order.

    Blank lines and Windows line ends are tolerated.

    Raises:
        DataError: missing file, or a malformed line (reported as ``file:line``).
    """
    if not os.path.isfile(path):
        raise DataError(f"missing RegDB index file {path}; expected idx/{{train,test}}_{{visible,thermal}}"
                        f"_{{1..10}}.txt ({LAYOUT_HINT})")
    entries = []
    with open(path, "r", encoding="utf-8") as f:
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
        raise DataError(f"RegDB index file {path} lists no images")
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
