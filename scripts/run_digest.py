"""A digest of everything a run wrote that must not change when the code is reorganised: one line per
checkpoint (exact hashes of its weights, optimizer and scheduler state, metrics and extra), per
metrics.jsonl line (without the wall-clock seconds), per .npz array and per test.py result file. Two runs of the same commands are
bit-identical when their digests are equal:

    python scripts/run_digest.py OUT_BEFORE > before.txt
    python scripts/run_digest.py OUT_AFTER > after.txt
    diff before.txt after.txt
"""
import argparse
import hashlib
import json
import os
import sys
from typing import Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.sample import DataError  # noqa: E402
from utils.cli import run_cli  # noqa: E402


def short_hash(data: bytes) -> str:
    """The first 16 hex digits of the sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:16]


def feed(h, value) -> None:
    """Feed ``value`` to the hash ``h`` exactly: tensors and arrays by their bytes (with dtype and shape),
    dicts, lists and tuples item by item, anything else by its repr (a tensor's repr rounds and
    abbreviates, so it never stands for the tensor)."""
    import torch

    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for v in value:
            feed(h, v)
    else:
        h.update(repr(value).encode())


def exact_hash(value) -> str:
    """:func:`short_hash` of ``value`` fed exactly (:func:`feed`)."""
    h = hashlib.sha256()
    feed(h, value)
    return h.hexdigest()[:16]


def checkpoint_line(path: str) -> str:
    """Exact hashes of a checkpoint's weights, optimizer and scheduler state, metrics (without the
    wall-clock seconds) and extra."""
    from utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items() if k != "seconds"}
    parts = {"weights": exact_hash(ckpt["model"]), "optimizer": exact_hash(ckpt.get("optimizer")),
             "scheduler": exact_hash(ckpt.get("scheduler")), "metrics": exact_hash(metrics),
             "extra": exact_hash(ckpt.get("extra"))}
    return " ".join(f"{k} {v}" for k, v in parts.items())


def file_lines(path: str, name: str) -> Iterator[str]:
    """The digest lines of one file (none for a file that is not a run output)."""
    if name.endswith(".pth"):
        yield checkpoint_line(path)
    elif name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            yield " ".join(f"{k} {short_hash(z[k].tobytes())}" for k in sorted(z.files))
    elif name == "metrics.jsonl":
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                record.pop("seconds", None)
                yield json.dumps(record, sort_keys=True)
    elif name.endswith(".json") and name.startswith("test_"):
        with open(path) as f:
            record = json.load(f)
        yield json.dumps({k: record[k] for k in ("results", "results_rerank") if k in record}, sort_keys=True)


def digest(folder: str) -> Iterator[str]:
    """``<relative path> <digest>`` lines of every run output below ``folder``, in a fixed order."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            for line in file_lines(path, name):
                yield f"{os.path.relpath(path, folder)} {line}"


def main(argv=None) -> None:
    """Print the digest of the run outputs below the given folder."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a folder holding run directories and test.py result files")
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        raise DataError(f"{args.folder} is not a folder")
    for line in digest(args.folder):
        print(line)


if __name__ == "__main__":
    sys.exit(run_cli(main))
