"""What the writers of the synthetic layouts share (:mod:`data.synthetic` for SYSU-MM01 and RegDB,
:mod:`data.synthetic_llcm` for LLCM): the seeded random streams, the argument checks, the choice of the
identity numbers, the output folder and the writing of images and JSON files.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import List, Tuple

import numpy as np
from PIL import Image

from .sample import DataError


def rng_stream(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one named stream; keys make streams independent of generation order."""
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def check_image_args(seed: int, height: int, width: int) -> None:
    """DataError for a negative --seed or an image smaller than 32 x 16 pixels."""
    if seed < 0:
        raise DataError(f"--seed must be >= 0, got {seed}")
    if height < 32 or width < 16:
        raise DataError(f"--img-h/--img-w must be at least 32/16, got {height}/{width}")


def identity_numbers(seed: int, namespace: int, ids: int, images_per_cam: Tuple[int, int], min_ids: int,
                     split: str, max_images: int) -> Tuple[np.random.Generator, List[int]]:
    """Check --ids and --images-per-cam, then draw ids + 2 distinct identity numbers from 1..3·ids+2.

    ``split`` says why ``min_ids`` are needed (for the message). Returns the plan's stream
    ``rng_stream(seed, namespace, 0)`` (after the draw, for the rest of the plan) and the numbers.
    """
    lo, hi = images_per_cam
    if ids < min_ids:
        raise DataError(f"--ids must be at least {min_ids} for the {split}, got {ids}")
    if not 1 <= lo <= hi <= max_images:
        raise DataError(f"--images-per-cam needs 1 <= A <= B <= {max_images}, got {lo} {hi}")
    rng = rng_stream(seed, namespace, 0)
    return rng, [int(x) for x in rng.choice(np.arange(1, 3 * ids + 3), size=ids + 2, replace=False)]


def prepare_root(root: str, force: bool, owned: Tuple[str, ...]) -> None:
    """Refuse a non-empty ``root`` unless ``force``; with ``force`` remove only what we generate."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"--out {root} exists and is not a folder")
    if os.path.isdir(root) and os.listdir(root):
        if not force:
            raise DataError(f"--out {root} is not empty; pass --force to regenerate into it or choose another folder")
        for name in owned:
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(root, exist_ok=True)


def save_image(img: np.ndarray, path: str) -> None:
    """Write an (H, W, 3) uint8 image, making its folder; JPEG or BMP by the file name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # JPEG quality is fixed so bytes are reproducible; BMP is written as 24-bit RGB
    Image.fromarray(img, "RGB").save(path, **({"quality": 92} if path.endswith(".jpg") else {}))


def write_json(path: str, obj: dict) -> None:
    """``obj`` as indented JSON with sorted keys and a final newline (a manifest)."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
