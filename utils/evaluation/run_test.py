"""Evaluate saved checkpoints on a dataset's test protocol and write the result JSON (the body of test.py).

:func:`run_test` evaluates one checkpoint, or one per RegDB trial with ``--trial all``, prints every
gallery trial and the mean ± std, and writes one JSON record per checkpoint; ``--rerank`` adds
k-reciprocal re-ranked results from the same features, labelled and stored apart from the plain ones.
It takes the typed settings of :func:`utils.settings.test_settings`, never the parsed flags (they
were checked at parse time, utils/arg_checks.py). What differs between datasets comes from :mod:`data.specs`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from data.datasets import load_protocols, trial_numbers
from data.images import ImageCache, default_cache_dir
from data.sample import cams_of, paths_of, pids_of
from data.specs import SPECS
from model import build_model
from utils.checkpoint import check_compatible, load_checkpoint, load_model_state
from utils.device import amp_dtype, configure_backends, resolve_device
from utils.distributed import env_rank
from utils.evaluation import visualize
from utils.evaluation.protocols import Evaluation, evaluate, format_results
from utils.evaluation.results import (check_replace, evaluation_identity, result_path, summary_lines, summary_path,
                                      trial_summary)
from utils.run import check_writable
from utils.runlog import write_json
from utils.settings import TEST_INTERPOLATION, EvalSettings, TestSettings


@dataclass(frozen=True)
class CheckpointPlan:
    """One checkpoint's evaluation, checked before any evaluation runs.

    Attributes:
        checkpoint: the checkpoint file as given (--resume-net1, or its pattern filled with the trial).
        eval: the protocol run for it: its trial and the input size it is evaluated at.
        out: its result JSON.
        identity: :func:`utils.evaluation.results.evaluation_identity` of the evaluation.
    """

    checkpoint: str
    eval: EvalSettings
    out: str
    identity: Dict


def input_size(settings: EvalSettings, ckpt: dict, path: str) -> Tuple[int, int]:
    """(img_h, img_w): ``settings.img_h``/``img_w`` (--img-h/--img-w) where given, else the training size
    stored in the checkpoint ``path``.

    A size that differs from training is allowed (a deliberate experiment) but warned about loudly:
    it silently changes the results.
    """
    trained = ckpt.get("args") or {}
    th, tw = trained.get("img_h"), trained.get("img_w")
    h = settings.img_h if settings.img_h is not None else (th or 288)
    w = settings.img_w if settings.img_w is not None else (tw or 144)
    if th is not None and tw is not None and (h, w) != (th, tw):
        print(f"warning: {path} is evaluated at {h}x{w} but trained at {th}x{tw}; results are not comparable "
              f"(drop --img-h/--img-w to use the training size)", file=sys.stderr)
    return h, w


def plan_checkpoint(settings: TestSettings, trial) -> CheckpointPlan:
    """Before evaluating: the checkpoint of ``trial``, its protocol and its result file, checked (the
    protocol lists resolve, the checkpoint fits --dataset/--trial/--arch, the folder is writable, no
    other evaluation is replaced without --force)."""
    pattern = settings.resume_net1
    path = pattern.format(trial=trial) if settings.eval.trial == "all" else pattern
    ev = replace(settings.eval, trial=trial)
    protocols = load_protocols(ev.dataset, ev.data_dir, trial=trial, modes=tuple(ev.modes), shot=ev.shot,
                               gallery_trials=ev.gallery_trials, directions=ev.directions)
    ckpt = load_checkpoint(path, flag="--resume-net1")
    check_compatible(ckpt, path, arch=settings.arch, dataset=ev.dataset, trial=trial)
    img_h, img_w = input_size(ev, ckpt, path)
    ev = replace(ev, img_h=img_h, img_w=img_w)
    identity = evaluation_identity(ev, path, list(protocols), settings.rerank)
    trained = tuple((ckpt.get("args") or {}).get(k) for k in ("img_h", "img_w"))
    out = result_path(identity, settings.out, settings.eval.trial == "all",
                      trained if None not in trained else (img_h, img_w), list(SPECS[ev.dataset].directions))
    check_writable(os.path.dirname(os.path.abspath(out)), "--out")
    check_replace(out, identity, settings.force)
    return CheckpointPlan(path, ev, out, identity)


def evaluate_checkpoint(settings: TestSettings, plan: CheckpointPlan, device: torch.device,
                        amp: Optional[torch.dtype]) -> Tuple[dict, Evaluation]:
    """Build the model a checkpoint describes, load it strictly and run its protocol
    (:func:`utils.evaluation.protocols.evaluate`, the one evaluation entry).

    Returns (checkpoint dict with the ``img_h``/``img_w`` evaluated at, Evaluation); the plain and the
    re-ranked results come from the same features (one (D,) float32 vector per distinct test image).
    ``amp``: the autocast dtype (None = float32).
    """
    path, ev = plan.checkpoint, plan.eval
    ckpt = load_checkpoint(path, flag="--resume-net1")
    check_compatible(ckpt, path, arch=settings.arch, dataset=ev.dataset, trial=ev.trial)
    model = build_model(arch=ckpt["arch"], num_classes=ckpt["num_classes"], pretrained="none",
                        non_local=ckpt.get("non_local", True))
    load_model_state(model, ckpt, path)
    model.to(device)
    ckpt["img_h"], ckpt["img_w"] = ev.img_h, ev.img_w  # the size evaluated at, for the result JSON
    cache = ImageCache.open(settings.data.cache_dir or default_cache_dir(ev.data_dir), ev.data_dir,
                            ev.img_h, ev.img_w, TEST_INTERPOLATION)
    evaluation = evaluate(model, ev, device, cache, amp, progress=True, keep_distmats=settings.visualize > 0,
                          rerank=settings.rerank)
    return ckpt, evaluation


def write_pictures(results: Dict, reranked: Optional[Dict], out_base: str, n: int, dataset: str) -> None:
    """A rank grid of gallery trial 0 of each protocol and one picture of the mean CMC curve of every
    protocol (mean over its gallery trials, like the printed headline), re-ranked curves included.

    ``results`` as :func:`score_protocols` with ``keep_distmats`` (each protocol's ``_cmcs``: a list of
    (20,) float64 CMCs; ``_distmats[0]``: the (Q, G) float64 distances of gallery trial 0); ``reranked``
    needs ``_cmcs`` only. ``n``: queries per rank grid.
    """
    spec = SPECS[dataset]
    curves, spreads = {}, {}
    for label, res_all in (("", results), (" re-ranked", reranked or {})):
        for name, res in res_all.items():
            cmcs = np.stack(res["_cmcs"])
            key = f"{name}{label}, mean of {len(cmcs)} gallery trial{'s' if len(cmcs) > 1 else ''}"
            curves[key], spreads[key] = cmcs.mean(axis=0), cmcs.std(axis=0)
    for name, res in results.items():
        split, dm = res["_splits"][0], res["_distmats"][0]
        cams = (cams_of(split.query), cams_of(split.gallery)) if spec.uses_cameras else (None, None)
        images = visualize.SplitImages(paths_of(split.query), paths_of(split.gallery), pids_of(split.query),
                                       pids_of(split.gallery), cams[0], cams[1], removal=spec.removal)
        visualize.save_rank_grid(f"{out_base}_{name}_ranks.png", images, dm, num_queries=n,
                                 note=f"{spec.display_name} {name}, gallery {split.name}")
    visualize.save_cmc_curve(f"{out_base}_cmc.png", curves, title=f"{os.path.basename(out_base)}: mean CMC over "
                             "gallery trials", std_by_name=spreads)


def _clean(results: Dict) -> Dict:
    """The result dict without the picture-only ``_`` keys."""
    return {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()}


def report(settings: TestSettings, plan: CheckpointPlan, ckpt: dict, evaluation: Evaluation) -> dict:
    """Print one checkpoint's results (re-ranked ones labelled), write them as JSON to ``plan.out``
    (with the pictures of --visualize next to it); returns the record.

    ``epoch`` is the checkpoint's epoch as people count it (1-based: after the first epoch it says 1),
    which :func:`utils.checkpoint.load_checkpoint` returns for old and new checkpoints alike.
    """
    ev, path, (results, reranked), rerank = plan.eval, plan.checkpoint, evaluation, settings.rerank
    weights = ckpt.get("pretrained") or {}
    print(f"== {ev.dataset} {'trial %d ' % ev.trial if ev.trial else ''}checkpoint {path} "
          f"(stage {ckpt['stage']}, epoch {ckpt['epoch']})")
    print(f"   started from: {weights.get('source', 'weights not recorded (an older checkpoint)')}"
          f"{' (sha256 ' + weights['sha256'] + ')' if weights.get('sha256') else ''}")
    for line in format_results(results):
        print(line)
    label = f"[re-ranked k1={rerank.k1} k2={rerank.k2} lambda={rerank.lam}] " if rerank else ""
    for line in format_results(reranked or {}, label=label):
        print(line)
    if settings.visualize:
        write_pictures(results, reranked, os.path.splitext(plan.out)[0], settings.visualize, ev.dataset)
    record = dict(dataset=ev.dataset, trial=ev.trial, checkpoint=os.path.abspath(path), stage=ckpt["stage"],
                  epoch=ckpt["epoch"], arch=ckpt["arch"], pretrained=ckpt.get("pretrained") or {},
                  img_h=ckpt["img_h"], img_w=ckpt["img_w"],
                  mode=ev.modes[0], shot=ev.shot, flip=ev.flip,
                  gallery_trials=len(next(iter(results.values()))["splits"]), results=_clean(results))
    if reranked is not None:
        record.update(rerank={"k1": rerank.k1, "k2": rerank.k2, "lambda": rerank.lam}, results_rerank=_clean(reranked))
    write_json(plan.out, record)
    print(f"results written to {plan.out}")
    return record


def run_test(settings: TestSettings) -> Dict[int, dict]:
    """Evaluate one checkpoint (or one per trial with ``--trial all``) and write the results as JSON;
    with several trials also the mean over them. Every destination is checked before the first evaluation.

    Returns ``{trial: record}`` (the records written), empty on ranks > 0 under torchrun.
    """
    if env_rank() > 0:  # under torchrun rank 0 evaluates alone (and alone writes the JSON); the rest stop
        print(f"test.py: rank {env_rank()} has nothing to do, rank 0 evaluates")
        return {}
    device = resolve_device(settings.device)
    amp = amp_dtype(settings.amp, device)  # --amp resolved once; refuses --amp fp16 on a CPU
    configure_backends(device)  # TF32 / cudnn.benchmark as in training
    every_trial = settings.eval.trial == "all"
    trials = list(trial_numbers(settings.eval.dataset)) if every_trial else [settings.eval.trial]
    plans = {t: plan_checkpoint(settings, t) for t in trials}
    if len(trials) > 1:
        total = summary_path(settings.out, settings.eval.dataset, [p.checkpoint for p in plans.values()])
        first = plans[trials[0]].identity
        check_replace(total, dict(first, checkpoint=os.path.abspath(settings.resume_net1), trial="all"),
                      settings.force)
    summary = {}
    for trial in trials:
        ckpt, evaluation = evaluate_checkpoint(settings, plans[trial], device, amp)
        summary[trial] = report(settings, plans[trial], ckpt, evaluation)
    if len(trials) > 1:
        record = trial_summary(summary, os.path.abspath(settings.resume_net1), {t: plans[t].out for t in trials})
        for line in summary_lines(record):
            print(line)
        write_json(total, record)
        print(f"mean over the trials written to {total}")
    return summary
