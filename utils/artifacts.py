"""The stage-1 -> stage-2 hand-off: per modality the image paths, features and pseudo-labels.

Written by the baseline at its end (method.md D.4) as ``pseudo_labels.npz`` (arrays) plus
``pseudo_labels.json`` (metadata) in the stage-1 run directory. Paths are stored relative to the
dataset root, and stage 2 attaches labels by path, so list order can never misalign labels.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Dict, List, Sequence

import numpy as np

from data.sample import IR, RGB, DataError, Sample

ARTIFACT = "pseudo_labels.npz"


def relative_paths(samples: Sequence[Sample], root: str) -> List[str]:
    """Paths of ``samples`` relative to the dataset root (the artifact's keys)."""
    root = os.path.abspath(root)
    return [os.path.relpath(s.path, root) for s in samples]


def save_artifact(run_dir: str, root: str, samples: Dict[str, Sequence[Sample]],
                  features: Dict[str, np.ndarray], labels: Dict[str, np.ndarray], meta: Dict) -> str:
    """Write ``pseudo_labels.npz`` + ``pseudo_labels.json`` atomically; returns the npz path.

    Args:
        samples/features/labels: keyed by ``"rgb"``/``"ir"``; features (N, D) float32, labels (N,)
            int64 with -1 for outliers.
        meta: dataset, trial, eps, k1, k2, cluster counts, epoch ...
    """
    os.makedirs(run_dir, exist_ok=True)
    arrays = {}
    for m in (RGB, IR):
        if not (len(samples[m]) == len(features[m]) == len(labels[m])):
            raise ValueError(f"artifact: {m} samples, features and labels differ in length")
        arrays[f"paths_{m}"] = np.array(relative_paths(samples[m], root))
        arrays[f"features_{m}"] = np.asarray(features[m], dtype=np.float32)
        arrays[f"labels_{m}"] = np.asarray(labels[m], dtype=np.int64)
    path = os.path.join(run_dir, ARTIFACT)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    with open(path[:-4] + ".json.tmp", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(path[:-4] + ".json.tmp", path[:-4] + ".json")
    return path


def find_artifact(checkpoint_path: str) -> str:
    """The artifact next to a stage-1 checkpoint: its folder, then the parent folders (2 levels)."""
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    for _ in range(3):
        cand = os.path.join(folder, ARTIFACT)
        if os.path.isfile(cand):
            return cand
        folder = os.path.dirname(folder)
    raise DataError(f"no {ARTIFACT} found next to {checkpoint_path} (or in its parent folders); "
                    "run stage 1 to the end or pass --baseline-artifact PATH")


def load_artifact(path: str) -> Dict:
    """Read an artifact: ``{"paths_rgb": [...], "features_rgb": (N,D), "labels_rgb": (N,), ..., "meta": {}}``."""
    if not os.path.isfile(path):
        raise DataError(f"--baseline-artifact: no file at {path}")
    what = f"the {ARTIFACT} that baseline_*.py writes at its end; rerun stage 1 or give that file"
    if not zipfile.is_zipfile(path):  # np.load would try a pickle and answer with its allow_pickle advice
        raise DataError(f"{path} is not a stage-1 artifact (not an .npz archive, or a truncated one): expected {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = "holds Python objects" if "allow_pickle" in str(err) else "truncated or damaged"
        raise DataError(f"{path} is not a readable stage-1 artifact ({reason}): expected {what}") from None
    needed = {f"{a}_{m}" for a in ("paths", "features", "labels") for m in (RGB, IR)}
    if not needed <= set(out):
        raise DataError(f"{path} lacks {sorted(needed - set(out))}; rerun stage 1")
    for m in (RGB, IR):
        out[f"paths_{m}"] = [str(p) for p in out[f"paths_{m}"]]
    out["meta"] = _read_meta(path[:-4] + ".json")
    return out


def _read_meta(path: str) -> Dict:
    """The artifact's metadata JSON ({} if absent)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON ({type(err).__name__}); rerun stage 1 to rewrite it") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} does not hold the stage-1 metadata (a JSON object); rerun stage 1 to rewrite it")
    return meta


def align_to_samples(art: Dict, modality: str, samples: Sequence[Sample], root: str):
    """Features (N,D) and labels (N,) of the artifact reordered to ``samples`` by path.

    Raises:
        DataError: the artifact was made from other images (other dataset, trial or folder).
    """
    index = {p: i for i, p in enumerate(art[f"paths_{modality}"])}
    rel = relative_paths(samples, root)
    missing = [p for p in rel if p not in index]
    if missing or len(index) != len(rel):
        raise DataError(f"the stage-1 artifact's {modality} images do not match the dataset on disk "
                        f"({len(missing)} of {len(rel)} images missing, e.g. {missing[:1]}; artifact has "
                        f"{len(index)}); was it made with another --data-dir or --trial?")
    order = np.fromiter((index[p] for p in rel), dtype=np.int64, count=len(rel))
    return art[f"features_{modality}"][order], art[f"labels_{modality}"][order]
