"""Run directories: console + ``log.txt`` logging, ``args.json`` per start, ``metrics.jsonl`` per epoch."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Dict


def setup_logger(run_dir: str, name: str, enabled: bool = True) -> logging.Logger:
    """A logger that prints to the console and appends to ``<run_dir>/log.txt``.

    With ``enabled=False`` (non-zero ranks under torchrun) it only prints errors to the console: rank 0
    already prints every (identical) warning.
    """
    logger = logging.getLogger(f"mmm.{name}.{os.path.abspath(run_dir)}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.ERROR)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if enabled:
        os.makedirs(run_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(run_dir, "log.txt"))
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_args(run_dir: str, args: Dict[str, Any]) -> None:
    """(Re)write ``args.json`` with the flags of this start of the run: a corrected rerun or a
    ``--resume`` replaces what an earlier attempt recorded."""
    write_json(os.path.join(run_dir, "args.json"), args)


def append_metrics(run_dir: str, record: Dict[str, Any]) -> None:
    """Append one JSON line to ``<run_dir>/metrics.jsonl``."""
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")


def write_json(path: str, obj: Dict[str, Any]) -> None:
    """Write ``obj`` as indented JSON atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def restore_metrics(run_dir: str, record: Dict[str, Any]) -> bool:
    """On resume, append the checkpoint's own epoch record if ``metrics.jsonl`` lacks it.

    Checkpoints are written before the metrics line, so a run killed between the two resumes after an
    epoch whose line is missing. Returns True when a line was restored.
    """
    path = os.path.join(run_dir, "metrics.jsonl")
    key = (record.get("phase"), record.get("epoch"))
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    if (rec.get("phase"), rec.get("epoch")) == key:
                        return False
    append_metrics(run_dir, record)
    return True
