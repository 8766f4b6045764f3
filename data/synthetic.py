"""Synthetic visible-infrared re-ID data, written in the exact raw SYSU-MM01 and RegDB layouts.

No real data exist on the development machine, so the demo and the tests run on this. A person is
drawn from an ``Identity`` (:mod:`data.synthetic_render`): body shape, clothing pattern and accessories
survive in infrared; garment colours exist only in visible images. Infrared intensities of the garments are separate
identity attributes (independent of hue, only weakly tied to lightness), so grayscale is no shortcut.
Every random choice comes from ``numpy.random.default_rng([seed, ...keys])`` so a given seed gives
the same bytes regardless of generation order. Drawing (people, cameras, poses, :func:`render`) lives
in :mod:`data.synthetic_render`; this module writes the layouts (with the helpers of
:mod:`data.synthetic_base`, shared with the LLCM writer). Entry point: ``scripts/make_synthetic.py``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from .sample import DataError
from .synthetic_base import check_image_args, identity_numbers, prepare_root, rng_stream, save_image, write_json
from .synthetic_render import make_camera, make_identity, make_pose, render

RGB_CAMS = (1, 2, 4, 5)
IR_CAMS = (3, 6)
INDOOR_CAMS = (1, 2)
SYSU_OWNED = tuple(f"cam{c}" for c in range(1, 7)) + ("exp", "synthetic_manifest.json")
REGDB_OWNED = ("Visible", "Thermal", "idx", "synthetic_manifest.json")
_SYSU, _REGDB = 1, 2            # rng key namespaces, so the two layouts draw independent people
_TRIALS = 10


def _sysu_cams(rng: np.random.Generator, test_index: Optional[int]) -> List[int]:
    """Cameras of one id: >= 1 visible and >= 1 infrared. Test ids always have cam1 (so every query has a
    match in both search modes); the first two test ids miss cam4 / cam5 so gallery sizes vary."""
    ir = [c for c in IR_CAMS if rng.random() < 0.75] or [int(rng.choice(IR_CAMS))]
    if test_index is None:
        vis = [c for c in RGB_CAMS if rng.random() < 0.75] or [int(rng.choice(RGB_CAMS))]
    else:
        prob = {1: 1.0, 2: 0.4, 4: 0.0 if test_index == 0 else 0.7, 5: 0.0 if test_index == 1 else 0.7}
        vis = [c for c in RGB_CAMS if rng.random() < prob[c]]
    return sorted(vis + ir)


def plan_sysu(ids: int, seed: int, images_per_cam: Tuple[int, int] = (3, 6)) -> dict:
    """Choose ids, the train/val/test split, and the image count of every (id, camera).

    Valid ids are drawn from 1..3N (non-contiguous); two extra ids get folders but are in no list.
    Returns {"train", "val", "test", "extra": sorted id lists, "images": {(pid, cam): count}}.
    """
    lo, hi = images_per_cam
    rng, numbers = identity_numbers(seed, _SYSU, ids, images_per_cam, 5, "SYSU layout (2 train, 1 val, 2 test)",
                                    9999)
    valid = [int(x) for x in rng.permutation(numbers[:ids])]
    n_test, n_val = max(2, round(0.25 * ids)), max(1, round(0.15 * ids))
    plan = {"test": sorted(valid[:n_test]), "val": sorted(valid[n_test:n_test + n_val]),
            "train": sorted(valid[n_test + n_val:]), "extra": sorted(numbers[ids:])}
    cams = {pid: _sysu_cams(rng, None) for pid in plan["train"] + plan["val"]}
    cams.update({pid: _sysu_cams(rng, i) for i, pid in enumerate(plan["test"])})
    cams.update({pid: [int(rng.choice(RGB_CAMS)), int(rng.choice(IR_CAMS))] for pid in plan["extra"]})
    plan["images"] = {(pid, c): int(rng.integers(lo, hi + 1)) for pid in sorted(cams) for c in cams[pid]}
    return plan


def _sysu_counts(written: Dict[Tuple[int, int], int], plan: dict) -> dict:
    """Reader-facing counts (train = train_id + val_id, the usual VI-ReID practice)."""
    train, test = set(plan["train"] + plan["val"]), set(plan["test"])

    def images(ids, cams):
        return sum(n for (p, c), n in written.items() if (ids is None or p in ids) and c in cams)

    def pairs(cams):  # single-shot gallery: one image per (test id, visible camera)
        return sum(1 for (p, c) in written if p in test and c in cams)
    return {"train_rgb_images": images(train, RGB_CAMS), "train_ir_images": images(train, IR_CAMS),
            "train_ids": len(train), "val_ids": len(plan["val"]), "test_ids": len(test),
            "query_images": images(test, IR_CAMS), "gallery_images_all": pairs(RGB_CAMS),
            "gallery_images_indoor": pairs(INDOOR_CAMS), "all_rgb_images": images(None, RGB_CAMS),
            "all_ir_images": images(None, IR_CAMS)}


def generate_sysu(root: str, ids: int, seed: int, height: int = 128, width: int = 64,
                  images_per_cam: Tuple[int, int] = (3, 6), force: bool = False, verbose: bool = False) -> dict:
    """Write a synthetic SYSU-MM01 tree (cam1..cam6/IIII/NNNN.jpg, exp/*.txt) and its manifest."""
    check_image_args(seed, height, width)
    plan = plan_sysu(ids, seed, images_per_cam)
    prepare_root(root, force, SYSU_OWNED)
    cams = {c: make_camera(rng_stream(seed, _SYSU, 1, c), ir=c in IR_CAMS, outdoor=c in (4, 5, 6)) for c in range(1, 7)}
    # cam3 is the dark infrared camera in the same room as cam2: same floor line and wall texture layout
    cams[3] = dataclasses.replace(cams[3], floor=cams[2].floor, texture=(cams[3].texture[0],) + cams[2].texture[1:])
    people = sorted({p for p, _ in plan["images"]})
    written: Dict[Tuple[int, int], int] = {}
    for pid in tqdm(people, desc="sysu ids", file=sys.stderr, disable=not verbose):
        person = make_identity(rng_stream(seed, _SYSU, 3, pid))
        for (p, c), count in plan["images"].items():
            if p != pid:
                continue
            for n in range(1, count + 1):
                rng = rng_stream(seed, _SYSU, 2, pid, c, n)
                img = render(person, cams[c], make_pose(rng, height, width), rng, height, width)
                save_image(img, os.path.join(root, f"cam{c}", "%04d" % pid, "%04d.jpg" % n))
            written[(pid, c)] = count
    os.makedirs(os.path.join(root, "exp"), exist_ok=True)
    lists = {"train": plan["train"], "val": plan["val"], "test": plan["test"],
             "available": sorted(plan["train"] + plan["val"] + plan["test"])}
    for name, id_list in lists.items():
        with open(os.path.join(root, "exp", f"{name}_id.txt"), "w") as f:
            f.write(",".join(str(i) for i in id_list) + "\n")
    manifest = {"layout": "sysu", "seed": seed, "ids": ids, "image_size": {"height": height, "width": width},
                "images_per_cam": list(images_per_cam), "split": {k: plan[k] for k in ("train", "val", "test")},
                "extra_ids": plan["extra"], "counts": _sysu_counts(written, plan)}
    write_json(os.path.join(root, "synthetic_manifest.json"), manifest)
    return manifest


def _regdb_images(root: str, ids: int, seed: int, size: Tuple[int, int], per_id: int, verbose: bool) -> dict:
    """Render every person's visible/thermal pairs; returns pid -> [(visible, thermal) relative paths]."""
    height, width = size
    frames = rng_stream(seed, _REGDB, 0).choice(min(100000, max(10000, 4 * ids * per_id)), (ids, per_id), replace=False)
    cams = {"v": make_camera(rng_stream(seed, _REGDB, 1, 1), ir=False, outdoor=True),
            "t": make_camera(rng_stream(seed, _REGDB, 1, 2), ir=True, outdoor=True)}
    files = {}
    for pid in tqdm(range(1, ids + 1), desc="regdb ids", file=sys.stderr, disable=not verbose):
        person, files[pid] = make_identity(rng_stream(seed, _REGDB, 3, pid)), []
        for k, frame in enumerate(sorted(int(f) for f in frames[pid - 1])):
            rng = rng_stream(seed, _REGDB, 2, pid, k)
            pose = make_pose(rng, height, width)
            # dual-camera capture: same pose and view, but the thermal sensor is not exactly aligned
            poses = {"v": pose, "t": dataclasses.replace(pose, dx=pose.dx + rng.uniform(-0.04, 0.04) * width,
                                                           scale=pose.scale * rng.uniform(0.97, 1.03))}
            view, pair = "back" if pose.back else "front", []
            for folder, tag in (("Visible", "v"), ("Thermal", "t")):
                rel = f"{folder}/{pid}/{person.gender}_{view}_{tag}_{frame:05d}_{pid}.bmp"
                save_image(render(person, cams[tag], poses[tag], rng, height, width), os.path.join(root, rel))
                pair.append(rel)
            files[pid].append(tuple(pair))
    return files


def generate_regdb(root: str, ids: int, seed: int, height: int = 128, width: int = 64, images_per_id: int = 10,
                   force: bool = False, verbose: bool = False) -> dict:
    """Write a synthetic RegDB tree (Visible/, Thermal/, idx/ with 10 trials) and its manifest."""
    check_image_args(seed, height, width)
    if ids < 4 or not 1 <= images_per_id <= 1000 or ids * images_per_id > 100000:
        raise DataError(f"RegDB needs --ids >= 4 and 1 <= --images-per-id <= 1000 (ids x images <= 100000), "
                        f"got {ids} and {images_per_id}")
    prepare_root(root, force, REGDB_OWNED)
    files = _regdb_images(root, ids, seed, (height, width), images_per_id, verbose)
    os.makedirs(os.path.join(root, "idx"), exist_ok=True)
    trials = {}
    for t in range(1, _TRIALS + 1):
        order = [int(p) for p in rng_stream(seed, _REGDB, 4, t).permutation(np.arange(1, ids + 1))]
        counts = {}
        for part, people in (("train", order[:ids // 2]), ("test", order[ids // 2:])):
            counts[f"{part}_ids"] = len(people)
            for modality, column, key in (("visible", 0, "rgb"), ("thermal", 1, "ir")):
                # persons in shuffled order, labelled 0, 1, 2, ... in the order listed (same for both modalities)
                lines = [f"{pair[column]} {label}\n" for label, pid in enumerate(people) for pair in files[pid]]
                with open(os.path.join(root, "idx", f"{part}_{modality}_{t}.txt"), "w") as f:
                    f.writelines(lines)
                counts[f"{part}_{key}_images"] = len(lines)
        trials[str(t)] = counts
    manifest = {"layout": "regdb", "seed": seed, "ids": ids, "image_size": {"height": height, "width": width},
                "images_per_id": images_per_id,
                "counts": {"rgb_images": ids * images_per_id, "ir_images": ids * images_per_id, "trials": trials}}
    write_json(os.path.join(root, "synthetic_manifest.json"), manifest)
    return manifest
