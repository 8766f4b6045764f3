"""Write a synthetic visible-infrared re-ID dataset in the raw SYSU-MM01, RegDB and/or LLCM layout.

Example (the demo sizes, well under a minute on a laptop CPU):

    python scripts/make_synthetic.py --layout both --out /tmp/synth --ids 60 --seed 0

With ``--layout sysu``, ``regdb`` or ``llcm`` ``--out`` is the dataset root; with ``both`` the roots are
``OUT/sysu`` and ``OUT/regdb``, with ``all`` also ``OUT/llcm``. A non-empty ``--out`` is refused unless
``--force`` is given.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.sample import DataError  # noqa: E402
from data.specs import SPECS  # noqa: E402
from data.synthetic import generate_regdb, generate_sysu  # noqa: E402
from data.synthetic_llcm import generate_llcm  # noqa: E402
from utils.cli import run_cli  # noqa: E402

# One generator per dataset of data.specs.SPECS: (root, parsed flags) -> manifest.
GENERATORS = {
    "sysu": lambda root, a: generate_sysu(root, a.ids, a.seed, a.img_h, a.img_w, tuple(a.images_per_cam),
                                          force=a.force, verbose=True),
    "regdb": lambda root, a: generate_regdb(root, a.ids, a.seed, a.img_h, a.img_w, a.images_per_id,
                                            force=a.force, verbose=True),
    "llcm": lambda root, a: generate_llcm(root, a.ids, a.seed, a.img_h, a.img_w, tuple(a.images_per_cam),
                                          force=a.force, verbose=True),
}
GROUPS = {"both": ("sysu", "regdb"), "all": tuple(SPECS)}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", choices=(*SPECS, *GROUPS), required=True,
                   help="which raw layout to write (both: OUT/sysu and OUT/regdb; all: every layout, OUT/<name>)")
    p.add_argument("--out", required=True, help="output folder (the dataset root unless --layout both)")
    p.add_argument("--ids", type=int, required=True,
                   help="number of identities (SYSU: valid ids, split ~60/15/25 train/val/test; "
                        "RegDB: persons, split 50/50 in each of the 10 trials; LLCM: split ~2/3 train, 1/3 test)")
    p.add_argument("--seed", type=int, required=True, help="random seed (>= 0); same seed gives identical files")
    p.add_argument("--img-h", type=int, default=128, help="image height in pixels (default 128)")
    p.add_argument("--img-w", type=int, default=64, help="image width in pixels (default 64)")
    p.add_argument("--images-per-cam", type=int, nargs=2, default=(3, 6), metavar=("A", "B"),
                   help="SYSU and LLCM: images per (id, camera[, modality]), drawn uniformly from A..B (default 3 6)")
    p.add_argument("--images-per-id", type=int, default=10,
                   help="RegDB: images per person and modality (default 10, as in the real set)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out, replacing only the folders/files the generator owns")
    return p


def _report(name: str, manifest: dict) -> None:
    """One line of counts; per-trial counts (RegDB) are shown for trial 1."""
    counts = manifest["counts"]
    line = ", ".join(f"{k}={v}" for k, v in counts.items() if not isinstance(v, dict))
    if "trials" in counts:
        line += ", trial 1: " + ", ".join(f"{k}={v}" for k, v in counts["trials"]["1"].items())
    print(f"{name}: {line}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``argv`` and write the requested layout(s)."""
    args = build_parser().parse_args(argv)
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise DataError(f"--out {args.out} is not empty; pass --force to regenerate into it or choose another folder")
    layouts = GROUPS.get(args.layout, (args.layout,))
    for name in layouts:
        root = os.path.join(args.out, name) if args.layout in GROUPS else args.out
        start = time.time()
        print(f"[{name}] writing {args.ids} ids at {args.img_h}x{args.img_w} to {root}", flush=True)
        manifest = GENERATORS[name](root, args)
        print(f"[{name}] done in {time.time() - start:.1f}s", flush=True)
        _report(name, manifest)


if __name__ == "__main__":
    sys.exit(run_cli(main))
