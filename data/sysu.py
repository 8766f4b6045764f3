"""Reader of the raw SYSU-MM01 layout (``cam1..cam6/IIII/*.jpg`` and ``exp/*_id.txt``).

Ids always come from ``exp/`` (the camera folders also hold ids that are in no split), and every list
is ordered the way the released pre-processing and test code order it: ids sorted as 4-digit strings,
then cameras in the fixed order below, then sorted file names (method.md B.1, B.5, H.2).
"""
from __future__ import annotations

import os
import random
from typing import Dict, Iterable, List, Sequence, Tuple

from .sample import IR, LAYOUT_HINT, RGB, DataError, Sample, TestSplit, check_folders, paths_of, pids_of

RGB_CAMS = (1, 2, 4, 5)
IR_CAMS = (3, 6)
INDOOR_RGB_CAMS = (1, 2)
ALL_CAMS = (1, 2, 3, 4, 5, 6)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
GALLERY_CAMS = {"all": RGB_CAMS, "indoor": INDOOR_RGB_CAMS}


def read_ids(path: str, missing_hint: str = "expected the SYSU-MM01 exp/ folder with train_id.txt, "
                                           "val_id.txt and test_id.txt") -> List[int]:
    """Read an id list file (SYSU ``exp/*_id.txt``, LLCM ``idx/test_id.txt``): the ids are on the first
    line, comma separated (e.g. ``1,2,4``).

    Surrounding whitespace and a trailing comma are tolerated. ``missing_hint`` says what was expected
    when the file does not exist.

    Raises:
        DataError: the file is missing, empty, or holds something that is not an integer.
    """
    if not os.path.isfile(path):
        raise DataError(f"missing split file {path}; {missing_hint} ({LAYOUT_HINT})")
    with open(path, "r", encoding="utf-8-sig") as f:  # an editor's byte-order mark is not part of the text
        lines = f.read().splitlines()
    first = lines[0].strip() if lines else ""
    tokens = [t.strip() for t in first.split(",")]
    tokens = [t for t in tokens if t]  # a trailing comma leaves an empty token
    if not tokens:
        raise DataError(f"split file {path} is empty; its first line must list ids like '1,2,4'")
    try:
        return [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
        raise DataError(f"split file {path}: {bad!r} is not an integer id; the first line must list "
                        "comma-separated integers like '1,2,4'") from None


def list_images(folder: str) -> List[str]:
    """Sorted names of the image files (.jpg/.jpeg/.png/.bmp, any case) directly inside ``folder``."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries
                 if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(names)


def check_sysu_root(root: str) -> str:
    """Check that ``root`` has ``cam1..cam6`` and ``exp/``; return it as an absolute path.

    Raises:
        DataError: naming the missing folder.
    """
    return check_folders(root, [f"cam{c}" for c in ALL_CAMS] + ["exp"], "cam1..cam6 and exp/")


def _split_ids(root: str, names: Sequence[str]) -> List[Tuple[str, int]]:
    """(split file name, id) pairs of the union of the given ``exp/`` files, ids sorted as %04d."""
    source: Dict[int, str] = {}
    for name in names:
        for pid in read_ids(os.path.join(root, "exp", name)):
            source.setdefault(pid, name)
    return [(source[pid], pid) for pid in sorted(source, key=lambda p: "%04d" % p)]


def _id_folders(root: str, split_file: str, pid: int) -> Dict[int, str]:
    """camera -> folder of ``pid`` for the cameras that have one; error if no camera has any."""
    folders = {c: os.path.join(root, f"cam{c}", "%04d" % pid) for c in ALL_CAMS}
    found = {c: d for c, d in folders.items() if os.path.isdir(d)}
    if not found:
        raise DataError(f"id {pid:04d} listed in exp/{split_file} has no folder under cam1..cam6 of "
                        f"{root}; restore its images or remove it from exp/{split_file}")
    return found


def _samples(folders: Dict[int, str], pid: int, cams: Iterable[int], modality: str) -> List[Sample]:
    """All images of one id in ``cams`` (in that order), files sorted by name."""
    out = []
    for cam in cams:
        if cam in folders:
            folder = folders[cam]
            out.extend(Sample(os.path.join(folder, n), pid, cam, modality) for n in list_images(folder))
    return out


def sysu_train(root: str) -> Tuple[List[Sample], List[Sample]]:
    """Training images of train_id ∪ val_id (395 ids, 22,258 RGB / 11,909 IR on the real set).

    Order: ids sorted (as %04d strings), then cameras 1,2,4,5 (RGB) resp. 3,6 (IR), then sorted file
    names — the row order of the released ``train_{rgb,ir}_resized_img.npy`` arrays.

    Returns:
        (rgb, ir) lists of :class:`Sample` with absolute paths, ground-truth pid and camera.

    Raises:
        DataError: broken layout, or a training id without RGB or without IR images (the method
        clusters both modalities of every identity).
    """
    root = check_sysu_root(root)
    rgb: List[Sample] = []
    ir: List[Sample] = []
    for split_file, pid in _split_ids(root, ("train_id.txt", "val_id.txt")):
        folders = _id_folders(root, split_file, pid)
        id_rgb = _samples(folders, pid, RGB_CAMS, RGB)
        id_ir = _samples(folders, pid, IR_CAMS, IR)
        for got, what, cams in ((id_rgb, "RGB", RGB_CAMS), (id_ir, "IR", IR_CAMS)):
            if not got:
                raise DataError(f"training id {pid:04d} (exp/{split_file}) has no {what} image under "
                                f"{', '.join(f'cam{c}' for c in cams)} of {root}; every training id needs "
                                f"both modalities — restore its images or remove it from exp/{split_file}")
        rgb.extend(id_rgb)
        ir.extend(id_ir)
    return rgb, ir


def sysu_test_ids(root: str) -> List[int]:
    """The test ids of ``exp/test_id.txt`` (96 on the real set), sorted as %04d strings."""
    root = check_sysu_root(root)
    return [pid for _, pid in _split_ids(root, ("test_id.txt",))]


def sysu_query(root: str) -> List[Sample]:
    """The query set: every IR image (cam3, cam6) of the test ids (3,803 on the real set).

    Same for all-search and indoor-search. Order: id, camera 3 then 6, sorted file name (method.md H.2).
    """
    root = check_sysu_root(root)
    out: List[Sample] = []
    for split_file, pid in _split_ids(root, ("test_id.txt",)):
        out.extend(_samples(_id_folders(root, split_file, pid), pid, IR_CAMS, IR))
    return out


def sysu_gallery_candidates(root: str, mode: str = "all") -> List[List[Sample]]:
    """Every gallery candidate, grouped per (test id, RGB camera) in protocol order.

    Returns:
        one list per (id, camera) whose folder holds at least one image, ids sorted, cameras in the
        order of ``mode`` (all: 1,2,4,5; indoor: 1,2), each list sorted by file name.
    """
    if mode not in GALLERY_CAMS:
        raise DataError(f"--mode must be one of {sorted(GALLERY_CAMS)}, got {mode!r}")
    root = check_sysu_root(root)
    groups: List[List[Sample]] = []
    for split_file, pid in _split_ids(root, ("test_id.txt",)):
        folders = _id_folders(root, split_file, pid)
        for cam in GALLERY_CAMS[mode]:
            group = _samples(folders, pid, (cam,), RGB)
            if group:  # an empty folder has nothing to draw from; it consumes no random number
                groups.append(group)
    return groups


def sysu_gallery(root: str, mode: str = "all", shot: int = 1, trial: int = 0) -> List[Sample]:
    """The RGB gallery of the standard SYSU-MM01 protocol for one random trial (method.md H.2).

    ``rng = random.Random(trial)`` (the same stream as the released ``random.seed(trial)``, without
    touching the global generator); for each test id (sorted) and each camera of ``mode`` with a
    non-empty folder, single-shot draws ``rng.choice(files)`` and multi-shot draws
    ``rng.sample(files, min(shot, len(files)))`` from the sorted file list. The released code calls
    ``random.sample(files, shot)`` and would crash on a folder with fewer than ``shot`` files; we take
    all of them (in sampled order). For ``shot=1`` ``choice`` and ``sample(files, 1)`` draw the same
    file, so both released variants give this gallery (301 images all-search, 112 indoor).
    """
    if shot < 1:
        raise DataError(f"--shot must be a positive number of gallery images per camera, got {shot}")
    rng = random.Random(trial)
    out: List[Sample] = []
    for group in sysu_gallery_candidates(root, mode):
        if shot == 1:
            out.append(rng.choice(group))
        else:
            out.extend(rng.sample(group, min(shot, len(group))))
    return out


def sysu_protocols(root: str, trial, modes: Sequence[str], shot: int, gallery_trials: int,
                   directions) -> Dict[str, List[TestSplit]]:
    """The test protocol (method.md H.2): ``{"<mode>-search": [trial0, trial1, ...]}``.

    Every split shares the query list (IR of the test ids); split ``trial<s>`` has the gallery drawn
    by :func:`sysu_gallery` with seed s. ``trial`` and ``directions`` do not apply (SYSU is searched
    infrared -> visible only); the caller has validated ``modes``, ``shot`` and ``gallery_trials``.
    """
    query = sysu_query(root)
    return {f"{mode}-search": [TestSplit(f"trial{s}", query, sysu_gallery(root, mode, shot, s))
                               for s in range(int(gallery_trials))] for mode in modes}


def sysu_counts(root: str, trial=None) -> Dict[str, int]:
    """Image and id counts of a SYSU-MM01 folder (gallery sizes: trial 0, single-shot)."""
    rgb, ir = sysu_train(root)
    return {"train_rgb_images": len(rgb), "train_ir_images": len(ir),
            "train_ids": len(set(pids_of(rgb).tolist()) | set(pids_of(ir).tolist())),
            "query_images": len(sysu_query(root)),
            "gallery_images_all": len(sysu_gallery(root, "all", 1, 0)),
            "gallery_images_indoor": len(sysu_gallery(root, "indoor", 1, 0)),
            "test_ids": len(sysu_test_ids(root))}


def sysu_image_paths(root: str, trial=None) -> List[str]:
    """Every image the readers can return: train ∪ val, the queries and every gallery candidate."""
    rgb, ir = sysu_train(root)
    gallery = [s for group in sysu_gallery_candidates(root, "all") for s in group]
    paths = paths_of(rgb) + paths_of(ir) + paths_of(sysu_query(root)) + paths_of(gallery)
    return list(dict.fromkeys(paths))
