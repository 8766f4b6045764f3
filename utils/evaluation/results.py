"""test.py's result files: named by what changes the numbers, never replaced by another evaluation.

A result JSON records the checkpoint and every setting that changes its numbers (mode, shot, flip,
input size, gallery samplings, the protocols evaluated, re-ranking). :func:`result_path` names the
default file by the settings that differ from the protocol's defaults (``test_sysu_all.json``,
``test_sysu_all_shot10_flip.json`` ...; re-ranking adds to the plain results and is not in the name), and :func:`check_replace` refuses, before any evaluation, to
replace a file that holds another evaluation unless ``--force`` is given. ``--trial all`` writes each
trial's record and a file with the mean over the trials (:func:`trial_summary`).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from data.sample import DataError
from data.specs import SPECS
from utils.evaluation.protocols import summarize
from utils.settings import EvalSettings

#: The record fields that identify an evaluation (two records equal on these hold the same numbers).
IDENTITY = ("checkpoint", "dataset", "trial", "mode", "shot", "flip", "img_h", "img_w", "gallery_trials",
            "protocols", "rerank")


def evaluation_identity(settings: EvalSettings, checkpoint: str, protocols: List[str], rerank) -> Dict:
    """The identity of one evaluation (:data:`IDENTITY`): the checkpoint file, the protocol run
    ``settings`` (one mode; its trial and the input size evaluated at), the names of the protocols
    evaluated and ``rerank`` (a RerankParams or None)."""
    s = settings
    return dict(checkpoint=os.path.abspath(checkpoint), dataset=s.dataset, trial=s.trial, mode=s.modes[0],
                shot=s.shot, flip=bool(s.flip), img_h=s.img_h, img_w=s.img_w,
                gallery_trials=s.gallery_trials or SPECS[s.dataset].gallery_trials, protocols=sorted(protocols),
                rerank=None if rerank is None else {"k1": rerank.k1, "k2": rerank.k2, "lambda": rerank.lam})


def name_suffix(identity: Dict, trained_hw, all_protocols: List[str]) -> str:
    """``_shot10_64x32_flip_g3_thermal2visible``: the settings that differ from the defaults. Re-ranking
    only adds results to the plain ones, so it is not in the name; :func:`check_replace` keeps a file with
    re-ranked results from being replaced by one without (or with other parameters)."""
    spec = SPECS[identity["dataset"]]
    parts = []
    if identity["shot"] != 1:
        parts.append(f"shot{identity['shot']}")
    if (identity["img_h"], identity["img_w"]) != tuple(trained_hw):
        parts.append(f"{identity['img_h']}x{identity['img_w']}")
    if identity["flip"]:
        parts.append("flip")
    if spec.gallery_trials > 1 and identity["gallery_trials"] != spec.gallery_trials:
        parts.append(f"g{identity['gallery_trials']}")
    if spec.directions and identity["protocols"] != sorted(all_protocols):
        parts.extend(identity["protocols"])
    return "".join("_" + p for p in parts)


def result_path(identity: Dict, out: Optional[str], every_trial: bool, trained_hw, all_protocols: List[str]) -> str:
    """Where one evaluation goes: ``out`` (--out; ``<out>_trial<t>.json`` when ``every_trial``, i.e.
    ``--trial all``), else next to the checkpoint, named by the dataset, mode, trial and :func:`name_suffix`."""
    if out:
        stem, ext = os.path.splitext(out)
        return f"{stem}_trial{identity['trial']}{ext or '.json'}" if every_trial else out
    spec = SPECS[identity["dataset"]]
    name = spec.result_name(identity["mode"], identity["trial"]) + name_suffix(identity, trained_hw, all_protocols)
    return os.path.join(os.path.dirname(identity["checkpoint"]), name + ".json")


def identity_of(record: Dict) -> Dict:
    """The :data:`IDENTITY` of a written record (``protocols`` from its results)."""
    out = {k: record.get(k) for k in IDENTITY if k != "protocols"}
    out["protocols"] = sorted(record.get("results") or record.get("mean") or {})  # JSON keys come back sorted
    return out


def check_replace(path: str, identity: Dict, force: bool) -> None:
    """Refuse to overwrite ``path`` when it holds another evaluation (or is not a test.py result).

    Raises:
        DataError: naming the file, the first setting that differs and ``--force``.
    """
    if force or not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8-sig") as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or "results" not in old and "mean" not in old:
        raise DataError(f"{path} exists and is not a test.py result; choose another --out or pass --force to "
                        "replace it")
    mine, theirs = {k: identity.get(k) for k in IDENTITY}, identity_of(old)
    diff = next((k for k in IDENTITY if mine[k] != theirs[k]), None)
    if diff is not None:
        raise DataError(f"{path} holds another evaluation ({diff} {theirs[diff]!r}, now {mine[diff]!r}); "
                        "choose another --out or pass --force to replace it")


def summary_path(out: Optional[str], dataset: str, paths: List[str]) -> str:
    """Where ``--trial all`` writes the mean over the trials: ``out`` (--out), else the checkpoints'
    (``paths``) common folder."""
    if out:
        return out
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return os.path.join(folder, f"test_{dataset}_alltrials.json")


def trial_summary(records: Dict[int, Dict], pattern: str, files: Dict[int, str]) -> Dict:
    """Mean ± std over the trials of every protocol's mean (plain, and re-ranked when present), with the
    per-trial checkpoints and result files; ``pattern`` is the absolute --resume-net1 pattern."""
    first = next(iter(records.values()))
    out = {k: first[k] for k in ("dataset", "mode", "shot", "flip", "img_h", "img_w", "gallery_trials")}
    out.update(trial="all", checkpoint=pattern, trials=list(records), checkpoints={str(t): r["checkpoint"] for t, r in records.items()},
               files={str(t): files[t] for t in records}, rerank=first.get("rerank"))
    for key, name in (("results", "mean"), ("results_rerank", "mean_rerank")):
        if key in first:
            out[name] = {p: summarize({f"trial{t}": r[key][p]["mean"] for t, r in records.items()})
                         for p in first[key]}
    return out


def summary_lines(summary: Dict) -> List[str]:
    """The printed lines of :func:`trial_summary` (plain, then re-ranked)."""
    lines = []
    for key, label in (("mean", ""), ("mean_rerank", "[re-ranked] ")):
        for name, avg in (summary.get(key) or {}).items():
            lines.append(f"{label}{name} over {len(summary['trials'])} trials: " +
                         "  ".join(f"{k} {avg['mean'][k]:.2f}±{avg['std'][k]:.2f}" for k in avg["mean"]))
    return lines
