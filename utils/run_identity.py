"""What defines a run, compared on ``--resume`` before anything is rewritten.

A checkpoint stores the flags of the run that wrote it (``ckpt["args"]``). Resuming with a flag that
changes the model or the data (dataset, trial, arch, image size, pretrained source, seed, loss and
clustering settings ...) would silently mix two runs, so :func:`check_same_run` refuses it in one line
naming the flag. Only the flags in :data:`MAY_CHANGE` (where the files are, how fast, how much is
logged, how long) may differ. Stage 2 also records a digest of its stage-1 inputs
(:func:`stage1_digests`): a stage 1 re-run since is refused the same way.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from data.sample import DataError

#: Flags a resumed run may change: paths, devices and speed, logging, evaluation, the number of epochs.
MAY_CHANGE = frozenset({
    "data_dir", "output_dir", "cache_dir", "resume_net1", "baseline_artifact", "workers", "device", "amp",
    "channels_last", "sync_bn", "test_batch", "knn", "resume", "print_freq", "report_ari", "eval_step",
    "eval_trials", "mode", "shot", "flip", "epochs", "seed_default"})
#: Compared first, so that the most telling difference is the one named.
FIRST = ("dataset", "trial", "arch", "img_h", "img_w", "pretrained", "stage1_inputs")


def file_digest(path: str) -> Optional[str]:
    """sha256 of a file's content (hex, first 16 digits), or None if it cannot be read."""
    from model.weights import sha256_of

    try:
        return sha256_of(path)[:16]
    except OSError:
        return None


def stage1_digests(resume_net1: str, baseline_artifact: Optional[str]) -> Dict[str, Optional[str]]:
    """Digests of stage 2's inputs: the --resume_net1 checkpoint and the stage-1 artifact it uses
    (--baseline-artifact or the one found next to the checkpoint; None where a file is missing: the
    stage reports that itself, with its own message)."""
    from utils.artifacts import find_artifact

    artifact = baseline_artifact
    if not artifact:
        try:
            artifact = find_artifact(resume_net1)
        except DataError:  # none found: stage 2 reports it when it reads the artifact
            artifact = None
    return {"checkpoint": file_digest(resume_net1),
            "artifact": file_digest(artifact) if artifact else None}


def _normal(key: str, value):
    """A flag value as compared: a pretrained file by its name (it may be given relative or absolute)."""
    if key == "pretrained" and isinstance(value, str) and value not in ("imagenet", "imagenet-offline", "none"):
        return os.path.basename(value)
    return value


def _shown(key: str, value) -> str:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {value}"


def check_same_run(saved: Dict, now: Dict, path: str) -> None:
    """Refuse to resume the run whose checkpoint ``path`` recorded the flags ``saved`` with the flags ``now``.

    Keys absent from ``saved`` (checkpoints of older code) are not compared.

    Raises:
        DataError: one line naming the first flag that differs and what to do.
    """
    keys = [k for k in FIRST if k in saved] + sorted(k for k in saved if k not in FIRST)
    for key in keys:
        if key in MAY_CHANGE or key not in now or _normal(key, saved[key]) == _normal(key, now[key]):
            continue
        if key == "stage1_inputs":
            raise DataError(f"--resume: the stage-1 output changed since this run started ({now.get('resume_net1')} or "
                            f"its pseudo_labels.npz was rewritten: stage 1 was run again); resuming would mix two "
                            f"stage-1 runs: start stage 2 afresh in another --output-dir")
        raise DataError(f"--resume: {path} was written with {_shown(key, saved[key])}, this command gives "
                        f"{_shown(key, now[key])}; resume with the run's own flags, or choose another "
                        "--output-dir for a new run")
