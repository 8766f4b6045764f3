"""Synthetic visible-infrared re-ID data in the raw LLCM layout (dataset_layouts.md section 4).

Written like the real set: ``idx/train_vis.txt``/``idx/train_nir.txt`` (``RELPATH LABEL``) naming images
under ``vis/IIII/`` and ``nir/IIII/``, ``idx/test_id.txt`` (one comma-separated line), and the test images
under ``test_vis/camK/IIII/`` and ``test_nir/camK/IIII/`` with ``test_nir/cam3`` present but empty. File
names are ``IIII_cCC_sSSSSSS_fF..F_{vis|nir}.jpg`` with frame numbers of varying width, so string order
and numeric order differ. To catch readers that assume what no source confirms, the training labels are
a shuffled 0..K-1 (never the folder number or the folder order), one identity is ``0000``, two extra
identities have test folders but are not in ``test_id.txt``, and one test identity has an empty camera
folder. People, cameras and poses come from :mod:`data.synthetic_render`; every random choice from
``numpy.random.default_rng([seed, 3, ...])``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Dict, List, Tuple

import numpy as np
from tqdm import tqdm

from .llcm import NIR_CAMS, TEST_DIRS, TRAIN_LISTS, VIS_CAMS
from .sample import IR, RGB
from .synthetic_base import check_image_args, identity_numbers, prepare_root, rng_stream, save_image, write_json
from .synthetic_render import make_camera, make_identity, make_pose, render

LLCM_OWNED = ("idx", "vis", "nir", "test_vis", "test_nir", "synthetic_manifest.json")
_LLCM = 3                       # rng key namespace (SYSU 1, RegDB 2)
CAMS = {RGB: VIS_CAMS, IR: NIR_CAMS}
TRAIN_DIRS = {RGB: "vis", IR: "nir"}
SUFFIX = {RGB: "vis", IR: "nir"}


def _cams(rng: np.random.Generator, modality: str, test: bool) -> List[int]:
    """Cameras of one identity in one modality: each with probability 0.4, at least one (two for test
    ids, so every query keeps a match after its own camera is removed)."""
    pool = CAMS[modality]
    chosen = [c for c in pool if rng.random() < 0.4]
    need = 2 if test else 1
    if len(chosen) < need:
        chosen = sorted(set(chosen) | {int(c) for c in rng.choice(pool, size=need, replace=False)})
    return chosen


def plan_llcm(ids: int, seed: int, images_per_cam: Tuple[int, int] = (2, 4)) -> dict:
    """Choose identity folders, the train/test split, training labels and the images of every
    (identity, modality, camera).

    Returns {"train", "test", "extra": sorted folder numbers, "labels": {folder: label},
    "images": {(pid, modality, cam): count}, "empty": (modality, cam, pid) of an empty test folder}.
    """
    lo, hi = images_per_cam
    rng, numbers = identity_numbers(seed, _LLCM, ids, images_per_cam, 6, "LLCM layout (3 train, 3 test)", 999)
    numbers[int(rng.integers(0, ids))] = 0          # identity 0000 exists in LLCM
    valid = [int(x) for x in rng.permutation(numbers[:ids])]
    n_test = max(3, round(ids / 3))                 # 351 of 1,064 on the real set
    plan = {"test": sorted(valid[:n_test]), "train": sorted(valid[n_test:]), "extra": sorted(numbers[ids:])}
    plan["labels"] = {pid: int(k) for pid, k in zip(plan["train"], rng.permutation(len(plan["train"])))}
    cams = {}
    for pid in plan["train"] + plan["test"] + plan["extra"]:
        for modality in (RGB, IR):
            cams[(pid, modality)] = _cams(rng, modality, pid in plan["test"])
    first = plan["test"][0]
    if len(cams[(first, RGB)]) == len(VIS_CAMS):   # keep one camera free for the empty folder
        cams[(first, RGB)] = cams[(first, RGB)][:-1]
    plan["empty"] = (RGB, next(c for c in VIS_CAMS if c not in cams[(first, RGB)]), first)
    plan["images"] = {(pid, m, c): int(rng.integers(lo, hi + 1)) for (pid, m), cs in sorted(cams.items()) for c in cs}
    return plan


def _file_names(rng: np.random.Generator, pid: int, modality: str, cam: int, count: int) -> List[str]:
    """``count`` distinct LLCM file names of one (identity, modality, camera); frames of varying width."""
    session = int(rng.integers(0, 1_000_000))
    frames = sorted(int(f) for f in rng.choice(np.arange(1, 30000), size=count, replace=False))
    return [f"{pid:04d}_c{cam:02d}_s{session:06d}_f{f}_{SUFFIX[modality]}.jpg" for f in frames]


def _cameras(seed: int) -> Dict[Tuple[int, str], object]:
    """Both modes of each dual-mode camera: one place (floor line, wall texture), a darker visible mode."""
    out = {}
    for c in VIS_CAMS:
        vis = make_camera(rng_stream(seed, _LLCM, 1, c, 0), ir=False, outdoor=c >= 5)
        out[(c, RGB)] = dataclasses.replace(vis, gain=vis.gain * 0.7)   # low light
        nir = make_camera(rng_stream(seed, _LLCM, 1, c, 1), ir=True, outdoor=c >= 5)
        out[(c, IR)] = dataclasses.replace(nir, floor=vis.floor, texture=(nir.texture[0],) + vis.texture[1:])
    return out


def _render_all(root: str, plan: dict, seed: int, size: Tuple[int, int], verbose: bool) -> Dict[tuple, List[str]]:
    """Write every image; returns (pid, modality, cam) -> relative paths (sorted as strings)."""
    height, width = size
    cams, train = _cameras(seed), set(plan["train"])
    written: Dict[tuple, List[str]] = {}
    for key in tqdm(sorted(plan["images"]), desc="llcm folders", file=sys.stderr, disable=not verbose):
        pid, modality, cam = key
        person = make_identity(rng_stream(seed, _LLCM, 3, pid))
        names = _file_names(rng_stream(seed, _LLCM, 4, pid, cam, modality == IR), pid, modality, cam, plan["images"][key])
        folder = (os.path.join(TRAIN_DIRS[modality], "%04d" % pid) if pid in train
                  else os.path.join(TEST_DIRS[modality], f"cam{cam}", "%04d" % pid))
        for n, name in enumerate(names):
            rng = rng_stream(seed, _LLCM, 2, pid, cam, modality == IR, n)
            img = render(person, cams[(cam, modality)], make_pose(rng, height, width), rng, height, width)
            save_image(img, os.path.join(root, folder, name))
        written[key] = sorted(os.path.join(folder, name) for name in names)
    return written


def _write_lists(root: str, plan: dict, written: Dict[tuple, List[str]]) -> None:
    """idx/: the training lists (persons in label order), test_id.txt, and the test lists."""
    idx = os.path.join(root, "idx")
    os.makedirs(idx, exist_ok=True)
    labels = {**plan["labels"], **{pid: k for k, pid in enumerate(plan["test"])}}  # test labels: list order
    # persons in label order, then camera, then file name
    keys = sorted((k for k in written if k[0] in labels),
                  key=lambda k: (k[0] not in plan["labels"], labels[k[0]], k[2]))
    for modality in (RGB, IR):
        lines = [f"{rel} {labels[p]}\n" for p, m, c in keys if m == modality for rel in written[(p, m, c)]]
        with open(os.path.join(idx, TRAIN_LISTS[modality]), "w") as f:
            f.writelines(line for line in lines if line.startswith(TRAIN_DIRS[modality] + "/"))
        # test_{vis,nir}.txt exist in the real set; the evaluation never reads them
        tests = [line for line in lines if not line.startswith(TRAIN_DIRS[modality] + "/")]
        with open(os.path.join(idx, f"test_{SUFFIX[modality]}.txt"), "w") as f:
            f.writelines(tests)
    with open(os.path.join(idx, "test_id.txt"), "w") as f:
        f.write(",".join(str(p) for p in plan["test"]) + "\n")


def _counts(plan: dict) -> dict:
    """The counts :func:`data.llcm.llcm_counts` must report (plus totals over every folder)."""
    test = set(plan["test"])

    def images(ids, modality):
        return sum(n for (p, m, _), n in plan["images"].items() if (ids is None or p in ids) and m == modality)
    return {"train_rgb_images": images(set(plan["train"]), RGB), "train_ir_images": images(set(plan["train"]), IR),
            "train_ids": len(plan["train"]), "test_ids": len(test),
            "test_rgb_images": images(test, RGB), "test_ir_images": images(test, IR),
            "gallery_rgb_images": sum(1 for (p, m, _) in plan["images"] if p in test and m == RGB),
            "gallery_ir_images": sum(1 for (p, m, _) in plan["images"] if p in test and m == IR),
            "all_rgb_images": images(None, RGB), "all_ir_images": images(None, IR)}


def generate_llcm(root: str, ids: int, seed: int, height: int = 128, width: int = 64,
                  images_per_cam: Tuple[int, int] = (2, 4), force: bool = False, verbose: bool = False) -> dict:
    """Write a synthetic LLCM tree and its manifest (``synthetic_manifest.json``); returns the manifest."""
    check_image_args(seed, height, width)
    plan = plan_llcm(ids, seed, images_per_cam)
    prepare_root(root, force, LLCM_OWNED)
    for modality in (RGB, IR):  # every camera folder of the layout, test_nir/cam3 included (and left empty)
        for cam in VIS_CAMS:
            os.makedirs(os.path.join(root, TEST_DIRS[modality], f"cam{cam}"), exist_ok=True)
    written = _render_all(root, plan, seed, (height, width), verbose)
    modality, cam, pid = plan["empty"]
    empty = os.path.join(TEST_DIRS[modality], f"cam{cam}", "%04d" % pid)
    os.makedirs(os.path.join(root, empty), exist_ok=True)
    _write_lists(root, plan, written)
    manifest = {"layout": "llcm", "seed": seed, "ids": ids, "image_size": {"height": height, "width": width},
                "images_per_cam": list(images_per_cam),
                "split": {k: plan[k] for k in ("train", "test", "extra")},
                "labels": {"%04d" % p: k for p, k in plan["labels"].items()}, "empty_folder": empty,
                "images": [[p, m, c, n] for (p, m, c), n in sorted(plan["images"].items())],
                "counts": _counts(plan)}
    write_json(os.path.join(root, "synthetic_manifest.json"), manifest)
    return manifest
