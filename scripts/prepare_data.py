"""Build the pre-resized image cache of a dataset (optional; training and testing work without it).

Example:
    python scripts/prepare_data.py --dataset sysu --data-dir /data/SYSU-MM01

Caches every image that training and testing read, once per requested interpolation, as
``<cache-dir>/images_{h}x{w}_{interp}.npy`` plus its index. Later runs pick the cache up by itself.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.datasets import DATASETS, check_root, image_paths  # noqa: E402
from data.images import INTERPOLATIONS, ImageCache, default_cache_dir  # noqa: E402
from data.sample import DataError  # noqa: E402
from utils.cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of this script."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which dataset layout --data-dir holds")
    p.add_argument("--data-dir", required=True, help="dataset root (SYSU: cam1..cam6 and exp/; RegDB: idx/ "
                                                     "and the image folders)")
    p.add_argument("--cache-dir", default=None, help="where to write the cache (default: <data-dir>/mmm_cache)")
    p.add_argument("--img-h", type=int, default=288, help="image height after resizing (default 288)")
    p.add_argument("--img-w", type=int, default=144, help="image width after resizing (default 144)")
    p.add_argument("--interpolation", nargs="+", default=sorted(INTERPOLATIONS), choices=sorted(INTERPOLATIONS),
                   help="resize filters to cache: bicubic (stage 1) and/or lanczos (stage 2 and testing); "
                        "default both")
    p.add_argument("--trial", default="all",
                   help="RegDB only: which trial's idx lists to cache, 1..10, or 'all' (default) for the "
                        "union of every trial's lists")
    return p


def human_size(n_bytes: int) -> str:
    """``n_bytes`` as a short human-readable string (e.g. ``2.8 GB``)."""
    size = float(n_bytes)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def main(argv=None) -> None:
    """Parse flags, list the images of the dataset and write one cache per interpolation."""
    args = build_parser().parse_args(argv)
    if args.img_h < 1 or args.img_w < 1:
        raise DataError(f"--img-h and --img-w must be positive, got {args.img_h}x{args.img_w}")
    root = check_root(args.dataset, args.data_dir)
    paths = image_paths(args.dataset, root, args.trial)
    cache_dir = args.cache_dir or default_cache_dir(root)
    print(f"{len(paths)} images of {args.dataset} at {root}")
    for interp in dict.fromkeys(args.interpolation):
        cache = ImageCache.build(cache_dir, root, paths, args.img_h, args.img_w, interp, progress=True)
        size = os.path.getsize(cache.array_path)
        print(f"wrote {cache.array_path} ({len(cache)} images, {human_size(size)})")


if __name__ == "__main__":
    sys.exit(run_cli(main))
