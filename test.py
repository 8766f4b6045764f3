"""Evaluate a checkpoint of either stage on the SYSU-MM01 or RegDB test protocol.

    python test.py --dataset sysu --data-dir D --resume-net1 logs/sysu/mmm/best.pth [--mode all|indoor] [--shot 1|10]
    python test.py --dataset regdb --data-dir D --trial 1 --resume-net1 logs/regdb_trial1/mmm/best.pth
    python test.py --dataset regdb --data-dir D --trial all --resume-net1 'logs/regdb_trial{trial}/mmm/best.pth'
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    """The test.py flags."""
    from utils.args import _alias, add_common_args, add_eval_args, new_parser

    p = new_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, training=False)
    add_eval_args(p)
    g = p.add_argument_group("test")
    _alias(g, "--resume-net1", required=True,
           help="checkpoint to evaluate (stage 1 or stage 2); with --trial all a pattern containing {trial}")
    g.add_argument("--direction", default="both", choices=["both", "visible2thermal", "thermal2visible"],
                   help="RegDB search direction(s) (default: both)")
    g.add_argument("--tvsearch", action="store_true", help="RegDB: thermal->visible only (released flag)")
    g.add_argument("--out", default=None, help="result JSON (default: next to the checkpoint)")
    g.add_argument("--visualize", type=int, default=0, metavar="N",
                   help="also write a PNG of N queries with their top-10 gallery images and a CMC curve PNG")
    return p


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


def evaluate_checkpoint(args, path: str, trial, device):
    """Build the model a checkpoint describes, load it strictly and run the protocol."""
    from model import build_model
    from utils.checkpoint import check_compatible, load_checkpoint, load_model_state
    from utils.evaluation import evaluate
    from data.images import ImageCache, default_cache_dir

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
    if args.direction == "both" and not args.tvsearch:
        directions = ("visible2thermal", "thermal2visible")
    else:
        directions = ("thermal2visible",) if args.tvsearch else (args.direction,)
    results = evaluate(model, args.dataset, args.data_dir, device=device, trial=trial, modes=(args.mode,),
                       shot=args.shot, gallery_trials=args.gallery_trials or 10, directions=directions,
                       img_h=img_h, img_w=img_w, cache=cache, batch_size=args.test_batch,
                       workers=args.workers, flip=args.flip, amp=args.amp, keep_distmats=args.visualize > 0)
    return ckpt, results


def write_pictures(results, out_base: str, n: int, dataset: str) -> None:
    """A rank grid of the first split of each protocol and one CMC curve of all protocols."""
    from data.sample import cams_of, paths_of, pids_of
    from utils.metrics import eval_regdb, eval_sysu
    from utils.visualize import save_cmc_curve, save_rank_grid

    curves = {}
    for name, res in results.items():
        split, dm = res["_splits"][0], res["_distmats"][0]
        qc, gc = (cams_of(split.query), cams_of(split.gallery)) if dataset == "sysu" else (None, None)
        save_rank_grid(f"{out_base}_{name}_ranks.png", paths_of(split.query), paths_of(split.gallery), dm,
                       pids_of(split.query), pids_of(split.gallery), num_queries=n, q_camids=qc, g_camids=gc)
        if qc is not None:
            cmc, _, _ = eval_sysu(dm, pids_of(split.query), pids_of(split.gallery), qc, gc)
        else:
            cmc, _, _ = eval_regdb(dm, pids_of(split.query), pids_of(split.gallery))
        curves[f"{name} {split.name}"] = cmc
    save_cmc_curve(f"{out_base}_cmc.png", curves, title=os.path.basename(out_base))


def main(argv=None):
    """Evaluate one checkpoint (or one per RegDB trial) and write the results as JSON."""
    from utils.args import parse
    from utils.device import resolve_device
    from utils.evaluation import format_results, summarize
    from utils.runlog import write_json

    args = parse(build_parser(), argv)
    from utils.distributed import env_rank
    if env_rank() > 0:  # under torchrun rank 0 evaluates alone (and alone writes the JSON); the rest stop
        print(f"test.py: rank {env_rank()} has nothing to do, rank 0 evaluates")
        return
    device = resolve_device(args.device)
    trials = list(range(1, 11)) if args.trial == "all" else [args.trial]
    if args.trial == "all" and "{trial}" not in args.resume_net1:
        from data.sample import DataError
        raise DataError("--trial all needs a --resume-net1 pattern containing {trial}, "
                        "e.g. 'logs/regdb_trial{trial}/mmm/best.pth'")
    summary = {}
    for trial in trials:
        path = args.resume_net1.format(trial=trial) if args.trial == "all" else args.resume_net1
        ckpt, results = evaluate_checkpoint(args, path, trial, device)
        print(f"== {args.dataset} {'trial %d ' % trial if trial else ''}checkpoint {path} "
              f"(stage {ckpt['stage']}, epoch {ckpt['epoch']})")
        for line in format_results(results):
            print(line)
        base = os.path.splitext(args.out or os.path.join(
            os.path.dirname(os.path.abspath(path)), f"test_{args.dataset}_{args.mode if args.dataset == 'sysu' else 'trial%s' % trial}"))[0]
        if args.visualize:
            write_pictures(results, base, args.visualize, args.dataset)
        clean = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()}
        record = dict(dataset=args.dataset, trial=trial, checkpoint=os.path.abspath(path), stage=ckpt["stage"],
                      epoch=ckpt["epoch"], arch=ckpt["arch"], img_h=ckpt["img_h"], img_w=ckpt["img_w"],
                      mode=args.mode, shot=args.shot, flip=args.flip, gallery_trials=args.gallery_trials or 10,
                      results=clean)
        write_json(base + ".json", record)
        print(f"results written to {base}.json")
        summary[trial] = clean
    if len(trials) > 1:
        for name in next(iter(summary.values())):
            avg = summarize({f"trial{t}": r[name]["mean"] for t, r in summary.items()})
            print(f"{name} over {len(trials)} trials: " +
                  "  ".join(f"{k} {avg['mean'][k]:.2f}±{avg['std'][k]:.2f}" for k in avg["mean"]))


if __name__ == "__main__":
    sys.exit(run_cli(main))
