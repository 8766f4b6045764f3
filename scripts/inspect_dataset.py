"""Validate a dataset folder and print its image/id counts next to the real dataset's.

Examples:
    python scripts/inspect_dataset.py --dataset sysu --data-dir /data/SYSU-MM01
    python scripts/inspect_dataset.py --dataset regdb --data-dir /data/RegDB --trial 3 --json
    python scripts/inspect_dataset.py --dataset llcm --data-dir /data/LLCM
    python scripts/inspect_dataset.py --dataset sysu --data-dir /data/SYSU-MM01 --check-images

Every reader runs, so a broken layout ends with a one-line error (exit status 2). Counts that differ
from the real dataset are reported but are not an error: synthetic or partial data is valid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.datasets import DATASETS, check_root, check_trial, dataset_counts, image_paths  # noqa: E402
from data.sample import DataError  # noqa: E402
from data.specs import SPECS  # noqa: E402
from utils.cli import run_cli  # noqa: E402

# The counts of the real datasets that a source states (data.specs); LLCM's query/gallery sizes are not stated.
REAL_COUNTS = {name: dict(spec.real_counts) for name, spec in SPECS.items()}


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of this script."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which dataset layout --data-dir holds")
    p.add_argument("--data-dir", required=True, help="dataset root (SYSU: cam1..cam6 and exp/; RegDB: idx/ "
                                                     "and the image folders; LLCM: idx/, test_vis/, test_nir/ "
                                                     "and the training folders idx/ names)")
    p.add_argument("--trial", default="1", help="RegDB only: which split 1..10 to inspect (default 1)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object with the counts")
    p.add_argument("--check-images", action="store_true",
                   help="also decode every image (slow) and report the unreadable ones")
    return p


def compare_with_real(dataset: str, counts: dict) -> dict:
    """{key: {"found": x, "real": y}} for every count that differs from the real dataset."""
    return {k: {"found": counts[k], "real": real} for k, real in REAL_COUNTS[dataset].items()
            if counts[k] != real}


def check_images(paths) -> list:
    """Decode every image of ``paths`` with a progress bar; return [(path, reason)] of unreadable ones."""
    from tqdm import tqdm

    from data.images import load_image  # imported here: counting alone must not load torch

    bad = []
    for path in tqdm(paths, desc="decoding images", unit="img"):
        try:
            load_image(path)
        except DataError as err:
            bad.append((path, str(err).split(";")[0]))  # drop the "run --check-images" hint
    return bad


def print_human(dataset: str, root: str, report: dict) -> None:
    """Write the report for a person: counts, comparison with the real dataset, unreadable images."""
    name = SPECS[dataset].display_name
    trial = f" (trial {report['trial']})" if report.get("trial") else ""
    print(f"{name} layout at {root} is valid{trial}:")
    for key, value in report["counts"].items():
        print(f"  {key:24s} {value}")
    if not report["differences"]:
        print(f"matches the real {name} counts")
    else:
        print(f"differs from the real {name} counts (expected for synthetic or partial data):")
        for key, d in report["differences"].items():
            print(f"  {key}: found {d['found']}, real {d['real']}")
    if "unreadable_images" in report:
        print(f"decoded {report['checked_images']} images, {len(report['unreadable_images'])} unreadable")
        for path in report["unreadable_images"]:
            print(f"  unreadable: {path}")


def main(argv=None) -> None:
    """Run every reader on --data-dir and print counts (exit 2 on a broken layout or bad images)."""
    args = build_parser().parse_args(argv)
    trial = check_trial(args.dataset, args.trial)
    root = check_root(args.dataset, args.data_dir)
    counts = dataset_counts(args.dataset, root, trial)
    differences = compare_with_real(args.dataset, counts)
    report = {"dataset": args.dataset, "data_dir": root, "trial": trial, "counts": counts,
              "matches_real_dataset": not differences, "differences": differences}
    bad = []
    if args.check_images:
        paths = image_paths(args.dataset, root, trial if trial is not None else "all")
        bad = check_images(paths)
        report["checked_images"] = len(paths)
        report["unreadable_images"] = [p for p, _ in bad]
    if args.json:
        flat = {"dataset": args.dataset, "data_dir": root, "trial": trial, **counts,
                **{k: v for k, v in report.items() if k not in ("dataset", "data_dir", "trial", "counts")}}
        print(json.dumps(flat, sort_keys=False))
    else:
        print_human(args.dataset, root, report)
    if bad:
        raise DataError(f"{len(bad)} of {report['checked_images']} images cannot be read (first: {bad[0][1]}); "
                        "replace them from the original dataset archive")


if __name__ == "__main__":
    sys.exit(run_cli(main))
