"""Evaluate saved checkpoints on a dataset's test protocol and write the result JSON (the body of test.py).

:func:`run_test` evaluates one checkpoint, or one per RegDB trial with ``--trial all``, prints every
gallery trial and the mean ± std, and writes one JSON record per checkpoint; ``--rerank`` adds
k-reciprocal re-ranked results from the same features, labelled and stored apart from the plain ones.
What differs between datasets comes from :mod:`data.specs`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from clustering.rerank import RerankParams
from data.datasets import load_protocols, trial_numbers
from data.images import ImageCache, default_cache_dir
from data.sample import DataError, cams_of, paths_of, pids_of
from data.specs import IR_TO_RGB, SPECS
from model import build_model
from utils.checkpoint import check_compatible, load_checkpoint, load_model_state
from utils.device import configure_backends, resolve_device
from utils.distributed import env_rank
from utils.evaluation import visualize
from utils.evaluation.protocols import format_results, protocol_features, score_protocols
from utils.evaluation.results import (check_replace, result_path, settings_of, summary_lines, summary_path,
                                      trial_summary)
from utils.run import check_writable
from utils.runlog import write_json

RERANK_FLAGS = ("rerank_k1", "rerank_k2", "rerank_lambda")


def rerank_params(args: argparse.Namespace) -> Optional[RerankParams]:
    """The :class:`clustering.rerank.RerankParams` of --rerank, or None; a --rerank-* flag without
    --rerank or a lambda outside [0, 1] is a DataError."""
    given = [f for f in RERANK_FLAGS if getattr(args, f) is not None]
    if not args.rerank:
        if given:
            raise DataError(f"--{given[0].replace('_', '-')} needs --rerank")
        return None
    default = RerankParams()
    k1 = args.rerank_k1 or default.k1
    k2 = args.rerank_k2 or default.k2
    lam = default.lam if args.rerank_lambda is None else args.rerank_lambda
    if not 0.0 <= lam <= 1.0:
        raise DataError(f"--rerank-lambda must be between 0 and 1, got {lam}")
    return RerankParams(k1, k2, lam)


def input_size(args: argparse.Namespace, ckpt: dict, path: str, quiet: bool = False) -> Tuple[int, int]:
    """(img_h, img_w): --img-h/--img-w where given, else the training size stored in the checkpoint.

    A size that differs from training is allowed (a deliberate experiment) but warned about loudly:
    it silently changes the results.
    """
    trained = ckpt.get("args") or {}
    th, tw = trained.get("img_h"), trained.get("img_w")
    h = args.img_h if args.img_h is not None else (th or 288)
    w = args.img_w if args.img_w is not None else (tw or 144)
    if th is not None and tw is not None and (h, w) != (th, tw) and not quiet:
        print(f"warning: {path} is evaluated at {h}x{w} but trained at {th}x{tw}; results are not comparable "
              f"(drop --img-h/--img-w to use the training size)", file=sys.stderr)
    return h, w


def requested_directions(args: argparse.Namespace) -> Optional[Tuple[str, ...]]:
    """The direction names --direction / --tvsearch ask for (None = every direction of the dataset)."""
    if args.tvsearch:
        return (IR_TO_RGB,)
    return None if args.direction == "both" else (args.direction,)


def evaluate_checkpoint(args: argparse.Namespace, path: str, trial, device: torch.device,
                        rerank: Optional[RerankParams]):
    """Build the model a checkpoint describes, load it strictly and run the protocol.

    Returns (checkpoint dict, plain results, re-ranked results or None) as
    :func:`utils.evaluation.protocols.score_protocols` gives them; both result dicts come from the
    same features (one (D,) float32 vector per distinct test image).
    """
    protocols, ckpt, (img_h, img_w) = checked_inputs(args, path, trial, quiet=True)
    model = build_model(arch=ckpt["arch"], num_classes=ckpt["num_classes"], pretrained="none",
                        non_local=ckpt.get("non_local", True))
    load_model_state(model, ckpt, path)
    model.to(device)
    ckpt["img_h"], ckpt["img_w"] = img_h, img_w  # the size evaluated at, for the result JSON
    cache = ImageCache.open(args.cache_dir or default_cache_dir(args.data_dir), args.data_dir,
                            img_h, img_w, "lanczos")
    feats = protocol_features(model, protocols, device=device, img_h=img_h, img_w=img_w, cache=cache,
                              batch_size=args.test_batch, workers=args.workers, flip=args.flip, amp=args.amp)
    results = score_protocols(args.dataset, protocols, feats, keep_distmats=args.visualize > 0)
    reranked = None if rerank is None else score_protocols(args.dataset, protocols, feats, rerank=rerank)
    return ckpt, results, reranked


def checked_inputs(args: argparse.Namespace, path: str, trial, quiet: bool = False):
    """(protocols, checkpoint, (img_h, img_w)) of one evaluation, checked: the protocol lists resolve and
    the checkpoint fits --dataset/--trial/--arch. ``quiet``: no size warning (already printed)."""
    protocols = load_protocols(args.dataset, args.data_dir, trial=trial, modes=(args.mode,), shot=args.shot,
                               gallery_trials=args.gallery_trials, directions=requested_directions(args))
    ckpt = load_checkpoint(path, flag="--resume-net1")
    check_compatible(ckpt, path, arch=args.arch, dataset=args.dataset, trial=trial)
    return protocols, ckpt, input_size(args, ckpt, path, quiet)


def plan_output(args: argparse.Namespace, path: str, trial, rerank: Optional[RerankParams]):
    """Before evaluating: the result file of one checkpoint and the identity of its evaluation, checked
    (writable folder; no other evaluation replaced without --force). Returns (file, settings)."""
    protocols, ckpt, img_hw = checked_inputs(args, path, trial)
    settings = settings_of(args, path, trial, img_hw, list(protocols), rerank)
    trained = tuple((ckpt.get("args") or {}).get(k) for k in ("img_h", "img_w"))
    out = result_path(args, settings, trained if None not in trained else img_hw, list(SPECS[args.dataset].directions))
    check_writable(os.path.dirname(os.path.abspath(out)), "--out")
    check_replace(out, settings, args.force)
    return out, settings


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
        visualize.save_rank_grid(f"{out_base}_{name}_ranks.png", paths_of(split.query), paths_of(split.gallery),
                                 dm, pids_of(split.query), pids_of(split.gallery), num_queries=n,
                                 q_camids=cams[0], g_camids=cams[1], removal=spec.removal,
                                 note=f"{spec.display_name} {name}, gallery {split.name}")
    visualize.save_cmc_curve(f"{out_base}_cmc.png", curves, title=f"{os.path.basename(out_base)}: mean CMC over "
                             "gallery trials", std_by_name=spreads)


def report(args: argparse.Namespace, path: str, trial, ckpt: dict, results: Dict, reranked: Optional[Dict],
           rerank: Optional[RerankParams], out: str) -> dict:
    """Print one checkpoint's results (re-ranked ones labelled) and write them as JSON; returns the record.

    ``epoch`` is the checkpoint's epoch as people count it (1-based: after the first epoch it says 1),
    which :func:`utils.checkpoint.load_checkpoint` returns for old and new checkpoints alike.
    """
    spec = SPECS[args.dataset]
    weights = ckpt.get("pretrained") or {}
    print(f"== {args.dataset} {'trial %d ' % trial if trial else ''}checkpoint {path} "
          f"(stage {ckpt['stage']}, epoch {ckpt['epoch']})")
    print(f"   started from: {weights.get('source', 'weights not recorded (an older checkpoint)')}"
          f"{' (sha256 ' + weights['sha256'] + ')' if weights.get('sha256') else ''}")
    for line in format_results(results):
        print(line)
    label = f"[re-ranked k1={rerank.k1} k2={rerank.k2} lambda={rerank.lam}] " if rerank else ""
    for line in format_results(reranked or {}, label=label):
        print(line)
    base = os.path.splitext(out)[0]
    if args.visualize:
        write_pictures(results, reranked, base, args.visualize, args.dataset)

    def clean(res):
        """The result dict without the picture-only ``_`` keys."""
        return {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in res.items()}
    record = dict(dataset=args.dataset, trial=trial, checkpoint=os.path.abspath(path), stage=ckpt["stage"],
                  epoch=ckpt["epoch"], arch=ckpt["arch"], pretrained=ckpt.get("pretrained") or {},
                  img_h=ckpt["img_h"], img_w=ckpt["img_w"],
                  mode=args.mode, shot=args.shot, flip=args.flip,
                  gallery_trials=len(next(iter(results.values()))["splits"]), results=clean(results))
    if reranked is not None:
        record.update(rerank={"k1": rerank.k1, "k2": rerank.k2, "lambda": rerank.lam}, results_rerank=clean(reranked))
    write_json(out, record)
    print(f"results written to {out}")
    return record


def check_test_args(args: argparse.Namespace) -> None:
    """Refuse flag combinations the dataset cannot honour (a DataError each, before any work)."""
    spec = SPECS[args.dataset]
    if args.gallery_trials is not None and spec.gallery_trials == 1:
        raise DataError(f"--gallery-trials does not apply to {spec.display_name}: its galleries are not sampled")
    if args.trial == "all" and not spec.has_trials:
        raise DataError(f"--trial all applies to datasets with training splits; {spec.display_name} has one")
    if args.trial == "all" and "{trial}" not in args.resume_net1:
        raise DataError("--trial all needs a --resume-net1 pattern containing {trial}, "
                        "e.g. 'logs/regdb_trial{trial}/mmm/best.pth'")


def run_test(args: argparse.Namespace) -> Dict[int, dict]:
    """Evaluate one checkpoint (or one per trial with ``--trial all``) and write the results as JSON;
    with several trials also the mean over them. Every destination is checked before the first evaluation.

    Returns ``{trial: record}`` (the records written), empty on ranks > 0 under torchrun.
    """
    if env_rank() > 0:  # under torchrun rank 0 evaluates alone (and alone writes the JSON); the rest stop
        print(f"test.py: rank {env_rank()} has nothing to do, rank 0 evaluates")
        return {}
    rerank = rerank_params(args)
    check_test_args(args)
    device = resolve_device(args.device)
    configure_backends(device, args.amp)  # TF32 / cudnn.benchmark as in training; refuses --amp fp16 on a CPU
    trials = list(trial_numbers(args.dataset)) if args.trial == "all" else [args.trial]
    paths = {t: args.resume_net1.format(trial=t) if args.trial == "all" else args.resume_net1 for t in trials}
    plans = {t: plan_output(args, paths[t], t, rerank) for t in trials}
    if len(trials) > 1:
        total = summary_path(args, list(paths.values()))
        first = plans[trials[0]][1]
        check_replace(total, dict(first, checkpoint=os.path.abspath(args.resume_net1), trial="all"), args.force)
    summary = {}
    for trial in trials:
        ckpt, results, reranked = evaluate_checkpoint(args, paths[trial], trial, device, rerank)
        summary[trial] = report(args, paths[trial], trial, ckpt, results, reranked, rerank, plans[trial][0])
    if len(trials) > 1:
        record = trial_summary(summary, os.path.abspath(args.resume_net1), {t: plans[t][0] for t in trials})
        for line in summary_lines(record):
            print(line)
        write_json(total, record)
        print(f"mean over the trials written to {total}")
    return summary
