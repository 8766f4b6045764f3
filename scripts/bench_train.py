#!/usr/bin/env python3
"""Training speed, part by part, and the wall-clock of both stages on SYSU-MM01 estimated from the parts.

    python scripts/bench_train.py                          # CPU: --size small (resnet18 at 64x32), minutes
    python scripts/bench_train.py --device cuda --size real --out bench_train.json   # one GPU, real sizes

Parts (all inputs generated here, deterministically; nothing is downloaded and ../shared is not needed):
  loader   images/s of the training pipelines on ONE core (in-process, one thread), at the released
           288x144: stage 1 = visible two-view + infrared pipelines (bicubic), stage 2 = the paired item
           (lanczos), each decoding generated JPEGs ("decoded") and from the pre-resize cache ("cached").
           An image is one source image (a visible image yields two augmented views).
  step     one optimizer step on synthetic tensors on the device, per --amp mode, with/without
           channels_last: stage 1 = memory_step + Adam on the released batch (256 visible views + 128
           infrared); stage 2 = forward_batch + batch_losses + SGD on 6 ids x 4 x (2 views + 1 infrared);
           "s2 fwd" = the no-grad forward of the clean-probability and prototype passes.
  extract  flip-averaged feature extraction (two forwards per image), images/s.
  cluster  Jaccard + DBSCAN pseudo-labels of SYSU-sized features (22,258 visible + 11,909 infrared,
           2048-d; --size small: an eighth) on the device: visible, infrared, joint (k1 40 / k2 32).
The estimate (SYSU-MM01, released schedule, --workers loader processes):
  it1 = max(step1, loader1 / W); it2 = max(step2, loader2 / W); fw2 = max(fwd2, loader2 / W)
  stage 1 = 50 x (200 it1 + X + C_intra) + 50 x (200 x 2 it1 + X + C_intra + C_joint) + 100 E1 + (X + C_intra)
  stage 2 = 100 x 928 it2 + 95 x 2 x 928 fw2 + 100 E2
with X = extraction of the 34,167 training images, C = clustering, E1/E2 = per-epoch evaluation
(~7,900 / ~4,100 test images), loader1 = one core's time for 128 visible + 128 infrared images,
loader2 = for 24 pairs. Prints a table and writes the numbers as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from data.sample import DataError  # noqa: E402
from utils.arg_types import default_workers  # noqa: E402
from utils.bench.speed import bench_cluster, extraction_rate, stage1_step, stage2_step  # noqa: E402
from utils.settings import CLUSTER_INTERPOLATION as CLUSTER  # noqa: E402
from utils.settings import TEST_INTERPOLATION as TEST  # noqa: E402

SIZES = {  # "real" = the released settings; "small" = a quick CPU run of the same code
    "small": dict(arch="resnet18", img_h=64, img_w=32, s1_views=32, s1_ir=16, s2_ids=6, s2_pos=4, classes=64,
                  extract_batch=64, n_rgb=22258 // 8, n_ir=11909 // 8, ids=395 // 8, steps=3),
    "real": dict(arch="resnet50", img_h=288, img_w=144, s1_views=256, s1_ir=128, s2_ids=6, s2_pos=4, classes=395,
                 extract_batch=128, n_rgb=22258, n_ir=11909, ids=395, steps=10),
}
SYSU = dict(n_rgb=22258, n_ir=11909, iters=200, epochs1=50, epochs2=100, warm=5, pass2=22258 // 24 + 1,
            test1=3803 + 3010 + 1120, test2=3803 + 301, batch1=128, pairs2=24)
PARTS = ("loader", "step", "extract", "cluster")


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of this script."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--size", default="auto", choices=("auto", "small", "real"),
                   help="model, batch and clustering sizes: real (released) or small; auto = real on CUDA, "
                        "small on the CPU (default: auto)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure (default: all)")
    p.add_argument("--amp-modes", nargs="+", default=None, choices=("off", "bf16", "fp16"),
                   help="--amp modes of the step and extraction parts (default: off bf16, plus fp16 on CUDA)")
    p.add_argument("--loader-images", type=int, default=96, help="images per loader measurement (default: 96)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help=f"loader processes assumed by the estimate (default: as training, {default_workers()} here)")
    p.add_argument("--workdir", default=None, help="folder for the generated images (default: a temporary one)")
    p.add_argument("--out", default="bench_train.json", help="JSON result file (default: bench_train.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of every generated input (default: 0)")
    return p


# ------------------------------------------------------------------------------------------------ loader
def loader_data(workdir: str, seed: int, h: int, w: int):
    """Generated SYSU-layout images (320x160 JPEGs) and their pre-resize caches at h x w."""
    from data.datasets import load_train
    from data.images import ImageCache
    from data.synthetic import generate_sysu

    root = os.path.join(workdir, "sysu")
    if not os.path.isfile(os.path.join(root, "synthetic_manifest.json")):
        generate_sysu(root, ids=12, seed=seed, height=320, width=160, images_per_cam=(3, 5), force=True)
    rgb, ir = load_train("sysu", root)
    caches = {interp: ImageCache.build(os.path.join(workdir, "cache"), root, [s.path for s in rgb + ir], h, w,
                                       interp, progress=False) for interp in (CLUSTER, TEST)}
    return rgb, ir, caches


def per_core_rate(dataset, n: int, pair: bool) -> float:
    """Source images per second of ``dataset[i]`` in this process (one thread): a pair counts 2."""
    size = len(dataset.rgb) if pair else len(dataset)
    keys = [(i % size, i % len(dataset.ir)) if pair else i % size for i in range(n)]
    dataset[keys[0]]  # warm caches (memmap pages, imports)
    start = time.perf_counter()
    for k in keys:
        dataset[k]
    return n * (2 if pair else 1) / (time.perf_counter() - start)


def bench_loader(args, h: int = 288, w: int = 144) -> Dict[str, Dict[str, float]]:
    """Per-core images/s of the stage-1 and stage-2 pipelines, decoded and cached."""
    from data.images import ImageDataset, PairedDataset
    from data.transforms import build_train_transforms

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_train_")
    rgb, ir, caches = loader_data(workdir, args.seed, h, w)
    rgb_tf, ir_tf = build_train_transforms(h, w)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: Dict[str, Dict[str, float]] = {}
    try:
        for state in ("decoded", "cached"):
            torch.manual_seed(args.seed)
            c = {k: (v if state == "cached" else None) for k, v in caches.items()}
            s1 = {m: ImageDataset(s, tf, h=h, w=w, interpolation=CLUSTER, cache=c[CLUSTER])
                  for m, s, tf in (("rgb", rgb, rgb_tf), ("ir", ir, ir_tf))}
            pair = PairedDataset(*(ImageDataset(s, tf, h=h, w=w, interpolation=TEST, cache=c[TEST])
                                   for s, tf in ((rgb, rgb_tf), (ir, ir_tf))))
            r = {m: per_core_rate(d, args.loader_images, False) for m, d in s1.items()}
            out[state] = {"stage1_rgb": r["rgb"], "stage1_ir": r["ir"],
                          "stage1": 2.0 / (1.0 / r["rgb"] + 1.0 / r["ir"]),  # equal visible and infrared counts
                          "stage2": per_core_rate(pair, args.loader_images, True)}
    finally:
        torch.set_num_threads(threads)
    return out


def bench_model_parts(args, size: dict, device, modes: List[str], parts) -> Dict[str, Dict]:
    """Step / extraction timings for every --amp mode, with and without channels_last."""
    out: Dict[str, Dict] = {}
    for amp in modes:
        for cl in (False, True):
            key = f"{amp}{'+cl' if cl else ''}"
            row = {}
            try:
                if "step" in parts:
                    row["stage1_step"] = stage1_step(size, device, amp, cl, size["steps"])
                    row.update({f"stage2_{k}": v for k, v in stage2_step(size, device, amp, cl, size["steps"]).items()})
                if "extract" in parts:
                    row["extract_images_per_s"] = extraction_rate(size, device, amp, cl, size["steps"])
            except torch.cuda.OutOfMemoryError:  # a smaller GPU: report it, measure the other settings
                row["error"] = "out of memory"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            out[key] = row
            print(f"  {key}: {_fmt(row)}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ estimate
def estimate(loader: Dict, model: Dict, cluster: Dict, workers: int) -> Dict[str, Dict[str, float]]:
    """Hours of stage 1 and stage 2 on SYSU-MM01 per (model setting, loader state); see the module docstring."""
    s, out = SYSU, {}
    c_intra, c_joint = cluster["rgb"]["seconds"] + cluster["ir"]["seconds"], cluster["joint"]["seconds"]
    for key, row in model.items():
        if not {"stage1_step", "stage2_step", "extract_images_per_s"} <= set(row):
            continue
        x = (s["n_rgb"] + s["n_ir"]) / row["extract_images_per_s"]
        e1, e2 = s["test1"] / row["extract_images_per_s"], s["test2"] / (2 * row["extract_images_per_s"])
        for state, rates in loader.items():
            load1 = s["batch1"] / rates["stage1_rgb"] + s["batch1"] / rates["stage1_ir"]
            load2 = 2 * s["pairs2"] / rates["stage2"]
            it1 = max(row["stage1_step"], load1 / workers)
            it2, fw2 = (max(row[k], load2 / workers) for k in ("stage2_step", "stage2_forward"))
            stage1 = (s["epochs1"] * (s["iters"] * it1 + x + c_intra)
                      + s["epochs1"] * (2 * s["iters"] * it1 + x + c_intra + c_joint)
                      + 2 * s["epochs1"] * e1 + x + c_intra)
            stage2 = s["epochs2"] * (s["pass2"] * it2 + e2) + (s["epochs2"] - s["warm"]) * 2 * s["pass2"] * fw2
            out[f"{key} {state}"] = dict(stage1_h=stage1 / 3600, stage2_h=stage2 / 3600,
                                         total_h=(stage1 + stage2) / 3600,
                                         loader_bound=load1 / workers > row["stage1_step"])
    return out


def _fmt(row: Dict) -> str:
    """``key value`` pairs, numbers to 4 significant digits."""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in row.items())


def print_tables(result: Dict) -> None:
    """The human-readable summary of ``result`` (what is also written as JSON)."""
    if "loader" in result:
        print("\nloader, images/s on one core (288x144)   decoded JPEG   cached")
        for key, label in (("stage1_rgb", "stage 1 visible (two views)"), ("stage1_ir", "stage 1 infrared"),
                           ("stage1", "stage 1 (equal mix)"), ("stage2", "stage 2 (pairs)")):
            print(f"  {label:<38} {result['loader']['decoded'][key]:>10.0f} {result['loader']['cached'][key]:>8.0f}")
    if result.get("model"):
        print(f"\nmodel parts on {result['device']} ({result['size']}: {SIZES[result['size']]['arch']} "
              f"{SIZES[result['size']]['img_h']}x{SIZES[result['size']]['img_w']}), seconds or images/s")
        for key, row in result["model"].items():
            print(f"  {key:<10} {_fmt(row)}")
    if result.get("cluster"):
        print("\nclustering (Jaccard + DBSCAN) on the device")
        for key, row in result["cluster"].items():
            print(f"  {key:<6} {_fmt(row)}")
    if result.get("estimate"):
        note = "" if result["size"] == "real" else "  (small sizes: NOT an estimate of SYSU-MM01; use --size real)"
        print(f"\nSYSU-MM01 wall-clock estimate, hours, {result['workers']} loader workers{note}")
        for key, row in result["estimate"].items():
            print(f"  {key:<18} stage 1 {row['stage1_h']:.2f}  stage 2 {row['stage2_h']:.2f}  total "
                  f"{row['total_h']:.2f}{'  (loader-bound)' if row['loader_bound'] else ''}")


def main(argv=None) -> Dict:
    """Measure the requested parts, print the tables, write the JSON; returns the result dict."""
    from utils.device import amp_dtype, configure_backends, resolve_device

    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    size_name = args.size if args.size != "auto" else ("real" if device.type == "cuda" else "small")
    modes = args.amp_modes or (["off", "bf16", "fp16"] if device.type == "cuda" else ["off", "bf16"])
    for amp in modes:
        amp_dtype(amp, device)  # one-line error for fp16 on a CPU, before any measurement
    configure_backends(device)  # TF32 and cudnn.benchmark on CUDA
    if args.loader_images < 1 or args.workers < 1:
        raise DataError("--loader-images and --workers must be at least 1")
    size = SIZES[size_name]
    result: Dict = dict(device=str(device), size=size_name, workers=args.workers, threads=torch.get_num_threads(),
                        torch=torch.__version__, amp_modes=modes)
    if "loader" in args.parts:
        print("loader ...", flush=True)
        result["loader"] = bench_loader(args)
    if {"step", "extract"} & set(args.parts):
        print("model parts ...", flush=True)
        result["model"] = bench_model_parts(args, size, device, modes, args.parts)
    if "cluster" in args.parts:
        print("clustering ...", flush=True)
        result["cluster"] = bench_cluster(size, args.seed, device)
    if {"loader", "model", "cluster"} <= set(result):
        result["estimate"] = estimate(result["loader"], result["model"], result["cluster"], args.workers)
    print_tables(result)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"\nwritten to {args.out}")
    return result


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main))
