"""The one image pipeline of every stage: decode -> RGB -> resize to (h, w) -> uint8 (h, w, 3).

Stage 1 resizes with bicubic like the released baseline; stage 2 and testing with Lanczos like the
released pre-processing (method.md B.5). An optional :class:`ImageCache` stores the same uint8 arrays
in one memory-mapped ``.npy`` per (size, interpolation), so epochs skip JPEG decoding; it is filled
by this module's own :func:`resize_uint8`, so cached and decoded arrays are byte-identical.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import torch.utils.data
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .sample import DataError, Sample

INTERPOLATIONS = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
CHECK_HINT = "run `python scripts/inspect_dataset.py --check-images` to list every unreadable image"


def load_image(path: str) -> Image.Image:
    """Decode ``path`` fully into a 3-channel RGB PIL image (IR images too, see method.md B.1).

    Raises:
        DataError: missing, zero-byte or undecodable file, naming the path.
    """
    if not os.path.isfile(path):
        raise DataError(f"image {path} does not exist; {CHECK_HINT}")
    if os.path.getsize(path) == 0:
        raise DataError(f"image {path} is an empty (zero-byte) file; {CHECK_HINT}")
    img = None
    try:
        img = Image.open(path)
        # Decode now, so a truncated file fails here and not in a worker later. For single-frame files
        # (JPEG, BMP) load() also closes the file (Pillow's documented file handling), so an image that
        # is already RGB is returned as it is: convert() would only make a full copy.
        img.load()
        return img if img.mode == "RGB" else _to_rgb(img, path)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        if img is not None:
            img.close()
        raise DataError(f"image {path} cannot be decoded ({err}); {CHECK_HINT}") from None


def _to_rgb(img: Image.Image, path: str) -> Image.Image:
    """3-channel 8-bit RGB of a decoded image of another mode.

    16-bit and 32-bit integer images (thermal cameras write them) keep their top 8 of 16 bits: Pillow's
    own conversion clips every value above 255, which turns such an image almost white.

    Raises:
        DataError: a floating-point image (no agreed range to map to 8 bits), naming the path.
    """
    if img.mode == "F":
        raise DataError(f"image {path} holds floating-point pixels (mode F); convert it to an 8-bit or 16-bit "
                        f"image; {CHECK_HINT}")
    if img.mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I": integer pixels up to 16 bits
        grey = (np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")


def check_interpolation(name: str) -> int:
    """PIL resampling constant of ``name`` ("bicubic" or "lanczos")."""
    if name not in INTERPOLATIONS:
        raise DataError(f"--interpolation must be one of {sorted(INTERPOLATIONS)}, got {name!r}")
    return INTERPOLATIONS[name]


def resize_uint8(img: Image.Image, h: int, w: int, interpolation: str) -> np.ndarray:
    """Resize a PIL image to height ``h`` x width ``w`` with a named filter.

    Returns:
        uint8 array (h, w, 3), writable.
    """
    resample = check_interpolation(interpolation)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img.resize((w, h), resample), dtype=np.uint8)


def default_cache_dir(root: str) -> str:
    """Where :mod:`scripts.prepare_data` puts the cache by default: ``<root>/mmm_cache``."""
    return os.path.join(root, "mmm_cache")


def _cache_names(h: int, w: int, interpolation: str):
    tag = f"{h}x{w}_{interpolation}"
    return f"images_{tag}.npy", f"index_{tag}.json"


class ImageCache:
    """Pre-resized uint8 images (N, h, w, 3) in a memory-mapped ``.npy``, looked up by image path.

    The index stores paths relative to the dataset root, so a moved dataset keeps its cache. The
    memmap is opened lazily in each process: DataLoader workers fork (or unpickle) the object and
    open their own file handle on first use.
    """

    def __init__(self, array_path: str, root: str, rows: Dict[str, int], h: int, w: int,
                 interpolation: str):
        self.array_path = array_path
        self.root = os.path.abspath(root)
        self.rows = rows
        self.h, self.w, self.interpolation = h, w, interpolation
        self._array = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"], state["_pid"] = None, None  # never ship a memmap to another process
        return state

    def _memmap(self) -> np.ndarray:
        if self._array is None or self._pid != os.getpid():
            self._array = np.load(self.array_path, mmap_mode="r")
            self._pid = os.getpid()
        return self._array

    def get(self, path: str) -> Optional[np.ndarray]:
        """The cached uint8 (h, w, 3) array of ``path`` (a copy), or None if it is not cached."""
        row = self.rows.get(os.path.relpath(os.path.abspath(path), self.root))
        if row is None:
            return None
        return np.array(self._memmap()[row])

    @classmethod
    def open(cls, cache_dir: str, root: str, h: int, w: int,
             interpolation: str) -> Optional["ImageCache"]:
        """Open the cache for (h, w, interpolation) under ``cache_dir``; None if it was never built.

        Raises:
            DataError: the files exist but do not belong together (interrupted or foreign build).
        """
        check_interpolation(interpolation)
        array_name, index_name = _cache_names(h, w, interpolation)
        array_path = os.path.join(cache_dir, array_name)
        index_path = os.path.join(cache_dir, index_name)
        if not (os.path.isfile(array_path) and os.path.isfile(index_path)):
            return None
        rebuild = "rebuild it with `python scripts/prepare_data.py`"
        try:
            with open(index_path, "r", encoding="utf-8") as f:
                index = json.load(f)
            shape = np.load(array_path, mmap_mode="r").shape
        except (OSError, ValueError) as err:
            raise DataError(f"image cache {cache_dir} is unreadable ({err}); {rebuild}") from None
        rows = index.get("rows", {})
        expected = (len(rows), h, w, 3)
        if tuple(shape) != expected or (index.get("h"), index.get("w")) != (h, w) \
                or index.get("interpolation") != interpolation:
            raise DataError(f"image cache {array_path} has shape {tuple(shape)} but its index expects "
                            f"{expected}; {rebuild}")
        return cls(array_path, root, rows, h, w, interpolation)

    @classmethod
    def build(cls, out_dir: str, root: str, samples_paths: Iterable[str], h: int, w: int,
              interpolation: str, progress: bool = True) -> "ImageCache":
        """Decode and resize every image of ``samples_paths`` (absolute, under ``root``) into the cache.

        Writes ``images_{h}x{w}_{interp}.npy`` (uint8 (N, h, w, 3), through ``open_memmap`` so memory
        stays flat) and ``index_{h}x{w}_{interp}.json``; both go to a temporary name first and are
        moved into place with ``os.replace``, so an interrupted build never leaves a half cache.
        """
        check_interpolation(interpolation)
        root = os.path.abspath(root)
        rel = list(dict.fromkeys(os.path.relpath(os.path.abspath(p), root) for p in samples_paths))
        outside = [r for r in rel if r == ".." or r.startswith(".." + os.sep)]
        if outside:
            raise DataError(f"image {os.path.join(root, outside[0])} is not under the dataset root {root}")
        os.makedirs(out_dir, exist_ok=True)
        array_name, index_name = _cache_names(h, w, interpolation)
        array_path = os.path.join(out_dir, array_name)
        index_path = os.path.join(out_dir, index_name)
        tmp_array, tmp_index = array_path + f".tmp{os.getpid()}", index_path + f".tmp{os.getpid()}"
        try:
            out = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8,
                                            shape=(len(rel), h, w, 3))
            for row, r in enumerate(tqdm(rel, desc=f"caching {h}x{w} {interpolation}",
                                         disable=not progress, unit="img")):
                out[row] = resize_uint8(load_image(os.path.join(root, r)), h, w, interpolation)
            out.flush()
            del out
            index = {"h": h, "w": w, "interpolation": interpolation, "root_relative": True,
                     "rows": {r: i for i, r in enumerate(rel)}}
            with open(tmp_index, "w", encoding="utf-8") as f:
                json.dump(index, f)
            # the index goes last: open() only trusts an array whose index agrees with its shape
            os.replace(tmp_array, array_path)
            os.replace(tmp_index, index_path)
        finally:
            for tmp in (tmp_array, tmp_index):
                if os.path.exists(tmp):
                    os.remove(tmp)
        return cls(array_path, root, index["rows"], h, w, interpolation)


class ImageDataset(torch.utils.data.Dataset):
    """Images of a Sample list, resized once with a named filter, then passed to ``transform``.

    ``__getitem__(i)`` returns ``(img, label, cam, i)``: ``img = transform(PIL image (h, w))`` (a
    tensor or a tuple of tensors, or the PIL image when ``transform`` is None; a transform with a true
    ``accepts_uint8`` attribute gets the uint8 (h, w, 3) array instead), ``label`` =
    ``labels[i]`` if labels are given (pseudo-labels) else the ground-truth pid, ``cam`` the camera.
    """

    def __init__(self, samples: Sequence[Sample], transform=None, labels=None, h: int = 288,
                 w: int = 144, interpolation: str = "bicubic", cache: Optional[ImageCache] = None):
        check_interpolation(interpolation)
        if labels is not None and len(labels) != len(samples):
            raise ValueError(f"got {len(labels)} labels for {len(samples)} samples")
        if cache is not None and (cache.h, cache.w, cache.interpolation) != (h, w, interpolation):
            raise ValueError(f"cache holds {cache.h}x{cache.w} {cache.interpolation} images, "
                             f"dataset wants {h}x{w} {interpolation}")
        self.samples = list(samples)
        self.transform = transform
        self.labels = None if labels is None else [int(x) for x in labels]
        self.h, self.w, self.interpolation = h, w, interpolation
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def array(self, i: int) -> np.ndarray:
        """The resized uint8 (h, w, 3) image of sample ``i`` (from the cache when it has it)."""
        path = self.samples[i].path
        arr = self.cache.get(path) if self.cache is not None else None
        if arr is None:
            arr = resize_uint8(load_image(path), self.h, self.w, self.interpolation)
        return arr

    def __getitem__(self, i: int):
        img = self.array(i)
        if getattr(self.transform, "accepts_uint8", False):
            img = self.transform(img)  # the project's transforms take the uint8 array: no PIL round trip
        else:
            img = Image.fromarray(img)
            if self.transform is not None:
                img = self.transform(img)
        sample = self.samples[i]
        label = self.labels[i] if self.labels is not None else sample.pid
        return img, int(label), int(sample.cam), int(i)


class PairedDataset(torch.utils.data.Dataset):
    """An (rgb, ir) pair of :class:`ImageDataset` indexed by ``(i_rgb, i_ir)`` tuples from a sampler.

    ``__getitem__((i_rgb, i_ir))`` returns ``(img_rgb, label_rgb, cam_rgb, i_rgb, img_ir, label_ir,
    cam_ir, i_ir)``; ``len`` is the larger of the two datasets.
    """

    def __init__(self, rgb: ImageDataset, ir: ImageDataset):
        self.rgb = rgb
        self.ir = ir

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("feed", None)  # a DataLoader the training loop keeps here (utils.train.stage2_steps.loader) stays home
        return state

    def __len__(self) -> int:
        return max(len(self.rgb), len(self.ir))

    def __getitem__(self, index):
        i_rgb, i_ir = index
        return (*self.rgb[i_rgb], *self.ir[i_ir])
