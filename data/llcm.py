"""Reader of the raw LLCM layout (dataset_layouts.md section 4).

Training images come from ``idx/train_vis.txt`` and ``idx/train_nir.txt`` (``RELPATH LABEL`` a line),
so the name of the training folders is never assumed. The identity of a training image is the LABEL
column; whether it equals the identity folder number is not known, so it is not assumed either, but the
lists are checked to agree with the folders: one person folder has one label, in both lists, and one
label names one folder. The camera is the ``cCC`` field of the file name
(``IIII_cCC_sSSSSSS_fF..F_{vis|nir}.jpg``; the frame field has a variable width, so no field is cut at a
fixed position). Test images are found by walking ``test_vis/camK/IIII`` and ``test_nir/camK/IIII`` for the
ids of ``idx/test_id.txt``: identity = the ``IIII`` folder, camera = K. Orders follow the official code:
ids sorted as 4-digit strings, cameras in list order, files sorted as strings.
"""
from __future__ import annotations

import os
import random
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .regdb import read_idx
from .sample import IR, LAYOUT_HINT, RGB, DataError, Sample, TestSplit, check_folders, paths_of, pids_of
from .sysu import list_images, read_ids

VIS_CAMS = tuple(range(1, 10))
NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)   # test_nir/cam3 exists but is empty: camera 3 has no infrared mode
TRAIN_LISTS = {RGB: "train_vis.txt", IR: "train_nir.txt"}
TEST_DIRS = {RGB: "test_vis", IR: "test_nir"}
TEST_CAMS = {RGB: VIS_CAMS, IR: NIR_CAMS}
_IDX_HINT = "expected idx/train_vis.txt, idx/train_nir.txt and idx/test_id.txt of LLCM"


def check_llcm_root(root: str) -> str:
    """Check that ``root`` has ``idx/``, ``test_vis/`` and ``test_nir/``; return it as an absolute path.

    Raises:
        DataError: naming the missing folder.
    """
    return check_folders(root, ("idx", *TEST_DIRS.values()), "idx/, test_vis/ and test_nir/")


def camera_of(name: str, list_path: str) -> int:
    """The camera number of an LLCM file name: its ``cCC`` field (``0001_c01_s185535_f7010_nir.jpg`` -> 1).

    The fields are split on ``_``; the camera is the first field after the identity that reads ``c``
    followed by digits.

    Raises:
        DataError: no such field (naming ``list_path`` and the file).
    """
    fields = os.path.splitext(os.path.basename(name))[0].split("_")
    for field in fields[1:]:
        if len(field) > 1 and field[0] == "c" and field[1:].isdigit():
            return int(field[1:])
    raise DataError(f"{list_path}: cannot read the camera of {name}; LLCM file names look like "
                    f"IIII_cCC_sSSSSSS_fFFFF_vis.jpg ({LAYOUT_HINT})")


def _read_train_list(root: str, modality: str) -> Tuple[List[Sample], List[str]]:
    """Samples of one training list (pid = LABEL column) and the person folder of each image."""
    path = os.path.join(root, "idx", TRAIN_LISTS[modality])
    entries = read_idx(path, missing_hint=_IDX_HINT, what="LLCM")
    samples = [Sample(os.path.normpath(os.path.join(root, rel)), label, camera_of(rel, path), modality)
               for rel, label in entries]
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if missing:
        raise DataError(f"{len(missing)} of {len(samples)} images listed in {path} do not exist "
                        f"(first: {missing[0]}); check --data-dir points at the LLCM root")
    return samples, [os.path.basename(os.path.dirname(s.path)) for s in samples]


def _check_labels(folders: np.ndarray, labels: np.ndarray, lists: np.ndarray, root: str) -> None:
    """One label per person folder (within and across the two lists) and one folder per label.

    folders, labels, lists: (N,) person folder name, LABEL column and list file name of every line.
    """
    pairs, first = np.unique(np.stack([folders, labels.astype(str)], axis=1), axis=0, return_index=True)
    for col, other, what in ((0, 1, "person folder"), (1, 0, "label")):
        keys, counts = np.unique(pairs[:, col], return_counts=True)
        if (counts > 1).any():
            key = keys[counts > 1][0]
            rows = np.flatnonzero(pairs[:, col] == key)[:2]
            where = [f"{pairs[r, other]} in idx/{lists[first[r]]}" for r in rows]
            one_list = lists[first[rows[0]]] == lists[first[rows[1]]]
            hint = ("two person folders share one label" if col == 1 else
                    f"the LABEL column must give one person one label within idx/{lists[first[rows[0]]]}" if one_list
                    else "the LABEL column must give one person the same label in both lists")
            raise DataError(f"LLCM training lists under {root}/idx disagree: {what} {key} has "
                            f"{' and '.join(where)}; {hint}")


def llcm_train(root: str, trial=None) -> Tuple[List[Sample], List[Sample]]:
    """Training images of ``idx/train_vis.txt`` (rgb) and ``idx/train_nir.txt`` (ir), in file order.

    pid = LABEL column (713 identities, 16,946 visible / 13,975 infrared images on the real set),
    cam = the ``cCC`` field of the file name. ``trial`` does not apply (LLCM has one split).

    Raises:
        DataError: a missing list, a malformed line, a listed image that does not exist, a file name
        without a camera field, or labels that disagree with the person folders.
    """
    root = check_llcm_root(root)
    (rgb, f_rgb), (ir, f_ir) = (_read_train_list(root, m) for m in (RGB, IR))
    lists = np.array([TRAIN_LISTS[RGB]] * len(rgb) + [TRAIN_LISTS[IR]] * len(ir))
    _check_labels(np.array(f_rgb + f_ir), np.concatenate([pids_of(rgb), pids_of(ir)]), lists, root)
    return rgb, ir


def llcm_test_ids(root: str) -> List[int]:
    """The ids of ``idx/test_id.txt`` (351 on the real set), sorted as 4-digit strings."""
    root = check_llcm_root(root)
    ids = read_ids(os.path.join(root, "idx", "test_id.txt"), missing_hint=_IDX_HINT)
    return sorted(set(ids), key=lambda p: "%04d" % p)


def llcm_test_groups(root: str) -> Dict[str, List[List[Sample]]]:
    """Every test image of the test ids, per modality grouped by (id, camera) in protocol order.

    Returns ``{modality: [[Sample, ...] per (id, camera) folder with images]}``: ids sorted, cameras in
    the order of TEST_CAMS, files sorted by name.

    Raises:
        DataError: a listed test id has no folder under any camera of test_vis/ and test_nir/.
    """
    root = check_llcm_root(root)
    groups: Dict[str, List[List[Sample]]] = {RGB: [], IR: []}
    for pid in llcm_test_ids(root):
        found = 0
        for modality in (RGB, IR):
            for cam in TEST_CAMS[modality]:
                folder = os.path.join(root, TEST_DIRS[modality], f"cam{cam}", "%04d" % pid)
                if not os.path.isdir(folder):
                    continue
                found += 1
                names = list_images(folder)
                if names:  # an empty folder has nothing to draw from; it consumes no random number
                    groups[modality].append([Sample(os.path.join(folder, n), pid, cam, modality) for n in names])
        if not found:
            raise DataError(f"id {pid:04d} listed in {os.path.join(root, 'idx', 'test_id.txt')} has no folder "
                            f"under test_vis/cam1..cam9 or test_nir/; restore its images or remove it from the list")
    return groups


def llcm_gallery(groups: Sequence[Sequence[Sample]], trial: int) -> List[Sample]:
    """One image per (id, camera) group: ``random.Random(trial).choice`` over each sorted group, in order
    (the stream of the official ``random.seed(trial)`` + ``random.choice``, without the global generator)."""
    rng = random.Random(trial)
    return [rng.choice(group) for group in groups]


def llcm_protocols(root: str, trial, modes, shot, gallery_trials: int,
                   directions: Sequence[Tuple[int, str]]) -> Dict[str, List[TestSplit]]:
    """The test protocol (dataset_layouts.md section 4), rows = queries in both directions.

    ``directions``: (index, name) pairs; index 0 = every visible test image against one infrared image per
    (id, camera), 1 = every infrared test image against one visible image per (id, camera). Each direction
    has ``gallery_trials`` splits ``trial0``.. with galleries drawn for seeds 0, 1, ... ``trial``, ``modes``
    and ``shot`` do not apply (one split, one search mode, single-shot; the caller has checked them).
    """
    groups = llcm_test_groups(root)
    query = {m: [s for g in groups[m] for s in g] for m in (RGB, IR)}
    pairs = ((RGB, IR), (IR, RGB))
    return {name: [TestSplit(f"trial{s}", query[pairs[index][0]], llcm_gallery(groups[pairs[index][1]], s))
                   for s in range(int(gallery_trials))] for index, name in directions}


def llcm_counts(root: str, trial=None) -> Dict[str, int]:
    """Image and id counts of an LLCM folder (gallery sizes: single-shot, one image per (id, camera))."""
    rgb, ir = llcm_train(root)
    groups = llcm_test_groups(root)
    return {"train_rgb_images": len(rgb), "train_ir_images": len(ir),
            "train_ids": len(set(pids_of(rgb).tolist()) | set(pids_of(ir).tolist())),
            "test_ids": len(llcm_test_ids(root)),
            "test_rgb_images": sum(len(g) for g in groups[RGB]), "test_ir_images": sum(len(g) for g in groups[IR]),
            "gallery_rgb_images": len(groups[RGB]), "gallery_ir_images": len(groups[IR])}


def llcm_image_paths(root: str, trial=None) -> List[str]:
    """Every image the readers can return: both training lists and every test image of the test ids."""
    rgb, ir = llcm_train(root)
    groups = llcm_test_groups(root)
    tests = [s for m in (RGB, IR) for g in groups[m] for s in g]
    return list(dict.fromkeys(paths_of(rgb) + paths_of(ir) + paths_of(tests)))
