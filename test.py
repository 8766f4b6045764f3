"""Evaluate a checkpoint of either stage on the SYSU-MM01, RegDB or LLCM test protocol.

    python test.py --dataset sysu --data-dir D --resume-net1 logs/sysu/mmm/best.pth [--mode all|indoor] [--shot 1|10]
    python test.py --dataset regdb --data-dir D --trial 1 --resume-net1 logs/regdb_trial1/mmm/best.pth
    python test.py --dataset regdb --data-dir D --trial all --resume-net1 'logs/regdb_trial{trial}/mmm/best.pth'
    python test.py --dataset llcm --data-dir D --resume-net1 logs/llcm/mmm/best.pth [--rerank]

The plain results are always computed; --rerank adds k-reciprocal re-ranked results, printed with a
[re-ranked] label and stored under "results_rerank", never in place of the plain ones.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.cli import run_cli

RERANK_FLAGS = ("rerank_k1", "rerank_k2", "rerank_lambda")


def build_parser() -> argparse.ArgumentParser:
    """The test.py flags."""
    from data.specs import IR_TO_RGB, RGB_TO_IR, SPECS
    from utils.args import _alias, add_common_args, add_eval_args, new_parser, positive_int

    directions = list(dict.fromkeys([RGB_TO_IR, IR_TO_RGB] + [d for s in SPECS.values() for d in s.directions]))
    p = new_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, training=False)
    add_eval_args(p)
    g = p.add_argument_group("test")
    _alias(g, "--resume-net1", required=True,
           help="checkpoint to evaluate (stage 1 or stage 2); with --trial all a pattern containing {trial}")
    g.add_argument("--direction", default="both", choices=["both"] + directions,
                   help="RegDB and LLCM search direction(s): visible queries against the infrared gallery "
                        "(visible2thermal = visible2infrared) or the reverse (default: both; SYSU-MM01 is "
                        "searched infrared -> visible only)")
    g.add_argument("--tvsearch", action="store_true",
                   help="RegDB and LLCM: the infrared -> visible direction only (released flag)")
    g.add_argument("--out", default=None, help="result JSON (default: next to the checkpoint)")
    g.add_argument("--visualize", type=int, default=0, metavar="N",
                   help="also write a PNG of N queries with their top-10 gallery images (gallery trial 0) and "
                        "a PNG of the CMC curves averaged over the gallery trials")
    g = p.add_argument_group("re-ranking (reported separately from the plain results)")
    g.add_argument("--rerank", action="store_true",
                   help="also evaluate with k-reciprocal re-ranking (Zhong et al., CVPR 2017) of each query "
                        "against its gallery; printed with a [re-ranked] label and written as results_rerank")
    _alias(g, "--rerank-k1", type=positive_int, default=None, help="k1 of the re-ranking (default: 20)")
    _alias(g, "--rerank-k2", type=positive_int, default=None, help="k2 of the re-ranking (default: 6)")
    _alias(g, "--rerank-lambda", type=float, default=None,
           help="weight lambda of the original distance, 0..1: (1-lambda)*Jaccard + lambda*distance (default: 0.3)")
    return p


def rerank_params(args):
    """The :class:`clustering.rerank.RerankParams` of --rerank, or None; a --rerank-* flag without
    --rerank or a lambda outside [0, 1] is a DataError."""
    from clustering.rerank import RerankParams
    from data.sample import DataError

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


def input_size(args, ckpt, path: str):
    """(img_h, img_w): --img-h/--img-w where given, else the training size stored in the checkpoint.

    A size that differs from training is allowed (a deliberate experiment) but warned about loudly:
    it silently changes the results.
    """
    trained = ckpt.get("args") or {}
    th, tw = trained.get("img_h"), trained.get("img_w")
    h = args.img_h if args.img_h is not None else (th or 288)
    w = args.img_w if args.img_w is not None else (tw or 144)
    if th is not None and tw is not None and (h, w) != (th, tw):
        print(f"warning: {path} is evaluated at {h}x{w} but trained at {th}x{tw}; results are not comparable "
              f"(drop --img-h/--img-w to use the training size)", file=sys.stderr)
    return h, w


def requested_directions(args):
    """The direction names --direction / --tvsearch ask for (None = every direction of the dataset)."""
    from data.specs import IR_TO_RGB

    if args.tvsearch:
        return (IR_TO_RGB,)
    return None if args.direction == "both" else (args.direction,)


def evaluate_checkpoint(args, path: str, trial, device, rerank):
    """Build the model a checkpoint describes, load it strictly and run the protocol.

    Returns (checkpoint dict, plain results, re-ranked results or None); both result dicts come from
    the same features.
    """
    from data.datasets import load_protocols
    from data.images import ImageCache, default_cache_dir
    from model import build_model
    from utils.checkpoint import check_compatible, load_checkpoint, load_model_state
    from utils.evaluation.protocols import protocol_features, score_protocols

    protocols = load_protocols(args.dataset, args.data_dir, trial=trial, modes=(args.mode,), shot=args.shot,
                               gallery_trials=args.gallery_trials, directions=requested_directions(args))
    ckpt = load_checkpoint(path, flag="--resume-net1")
    check_compatible(ckpt, path, arch=args.arch, dataset=args.dataset, trial=trial)
    model = build_model(arch=ckpt["arch"], num_classes=ckpt["num_classes"], pretrained="none",
                        non_local=ckpt.get("non_local", True))
    load_model_state(model, ckpt, path)
    model.to(device)
    img_h, img_w = input_size(args, ckpt, path)
    ckpt["img_h"], ckpt["img_w"] = img_h, img_w  # the size evaluated at, for the result JSON
    cache = ImageCache.open(args.cache_dir or default_cache_dir(args.data_dir), args.data_dir,
                            img_h, img_w, "lanczos")
    feats = protocol_features(model, protocols, device=device, img_h=img_h, img_w=img_w, cache=cache,
                              batch_size=args.test_batch, workers=args.workers, flip=args.flip, amp=args.amp)
    results = score_protocols(args.dataset, protocols, feats, keep_distmats=args.visualize > 0)
    reranked = None if rerank is None else score_protocols(args.dataset, protocols, feats, rerank=rerank)
    return ckpt, results, reranked


def write_pictures(results, reranked, out_base: str, n: int, dataset: str) -> None:
    """A rank grid of gallery trial 0 of each protocol and one picture of the mean CMC curve of every
    protocol (mean over its gallery trials, like the printed headline), re-ranked curves included."""
    import numpy as np

    from data.sample import cams_of, paths_of, pids_of
    from data.specs import SPECS
    from utils.evaluation.visualize import save_cmc_curve, save_rank_grid

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
        save_rank_grid(f"{out_base}_{name}_ranks.png", paths_of(split.query), paths_of(split.gallery), dm,
                       pids_of(split.query), pids_of(split.gallery), num_queries=n, q_camids=cams[0],
                       g_camids=cams[1], removal=spec.removal,
                       note=f"{spec.display_name} {name}, gallery {split.name}")
    save_cmc_curve(f"{out_base}_cmc.png", curves, title=f"{os.path.basename(out_base)}: mean CMC over gallery "
                   "trials", std_by_name=spreads)


def report(args, path: str, trial, ckpt, results, reranked, rerank) -> dict:
    """Print one checkpoint's results (re-ranked ones labelled) and write them as JSON; returns the record.

    ``epoch`` is the checkpoint's epoch as people count it (1-based: after the first epoch it says 1),
    which :func:`utils.checkpoint.load_checkpoint` returns for old and new checkpoints alike.
    """
    from data.specs import SPECS
    from utils.evaluation.protocols import format_results
    from utils.runlog import write_json

    spec = SPECS[args.dataset]
    print(f"== {args.dataset} {'trial %d ' % trial if trial else ''}checkpoint {path} "
          f"(stage {ckpt['stage']}, epoch {ckpt['epoch']})")
    for line in format_results(results):
        print(line)
    label = f"[re-ranked k1={rerank.k1} k2={rerank.k2} lambda={rerank.lam}] " if rerank else ""
    for line in format_results(reranked or {}, label=label):
        print(line)
    base = os.path.splitext(args.out or os.path.join(os.path.dirname(os.path.abspath(path)),
                                                     spec.result_name(args.mode, trial)))[0]
    if args.visualize:
        write_pictures(results, reranked, base, args.visualize, args.dataset)

    def clean(res):
        return {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in res.items()}
    record = dict(dataset=args.dataset, trial=trial, checkpoint=os.path.abspath(path), stage=ckpt["stage"],
                  epoch=ckpt["epoch"], arch=ckpt["arch"], img_h=ckpt["img_h"], img_w=ckpt["img_w"],
                  mode=args.mode, shot=args.shot, flip=args.flip,
                  gallery_trials=len(next(iter(results.values()))["splits"]), results=clean(results))
    if reranked is not None:
        record.update(rerank={"k1": rerank.k1, "k2": rerank.k2, "lambda": rerank.lam}, results_rerank=clean(reranked))
    write_json(base + ".json", record)
    print(f"results written to {base}.json")
    return record


def main(argv=None):
    """Evaluate one checkpoint (or one per RegDB trial) and write the results as JSON."""
    from data.datasets import trial_numbers
    from data.sample import DataError
    from data.specs import SPECS
    from utils.args import parse
    from utils.device import configure_backends, resolve_device
    from utils.distributed import env_rank
    from utils.evaluation.protocols import summarize
    from utils.run import check_writable

    args = parse(build_parser(), argv)
    spec = SPECS[args.dataset]
    if env_rank() > 0:  # under torchrun rank 0 evaluates alone (and alone writes the JSON); the rest stop
        print(f"test.py: rank {env_rank()} has nothing to do, rank 0 evaluates")
        return
    rerank = rerank_params(args)
    if args.gallery_trials is not None and spec.gallery_trials == 1:
        raise DataError(f"--gallery-trials does not apply to {spec.display_name}: its galleries are not sampled")
    if args.trial == "all" and not spec.has_trials:
        raise DataError(f"--trial all applies to datasets with training splits; {spec.display_name} has one")
    if args.trial == "all" and "{trial}" not in args.resume_net1:
        raise DataError("--trial all needs a --resume-net1 pattern containing {trial}, "
                        "e.g. 'logs/regdb_trial{trial}/mmm/best.pth'")
    device = resolve_device(args.device)
    configure_backends(device, args.amp)  # TF32 / cudnn.benchmark as in training; refuses --amp fp16 on a CPU
    trials = list(trial_numbers(args.dataset)) if args.trial == "all" else [args.trial]
    summary = {}
    for trial in trials:
        path = args.resume_net1.format(trial=trial) if args.trial == "all" else args.resume_net1
        # The JSON goes next to the checkpoint unless --out: make sure it can be written before evaluating.
        if args.out or os.path.isfile(path):  # (a missing checkpoint is reported when it is loaded)
            check_writable(os.path.dirname(os.path.abspath(args.out or path)), "--out")
        ckpt, results, reranked = evaluate_checkpoint(args, path, trial, device, rerank)
        record = report(args, path, trial, ckpt, results, reranked, rerank)
        summary[trial] = record
    if len(trials) > 1:
        for key, label in (("results", ""), ("results_rerank", "[re-ranked] ")):
            if key not in summary[trials[0]]:
                continue
            for name in summary[trials[0]][key]:
                avg = summarize({f"trial{t}": r[key][name]["mean"] for t, r in summary.items()})
                print(f"{label}{name} over {len(trials)} trials: " +
                      "  ".join(f"{k} {avg['mean'][k]:.2f}±{avg['std'][k]:.2f}" for k in avg["mean"]))


if __name__ == "__main__":
    sys.exit(run_cli(main))
