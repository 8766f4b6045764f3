#!/usr/bin/env python3
"""Benchmark MMLM (batched k-means memories + multi-memory matching) on SYSU-size inputs.

Inputs are the SYSU-sized training features of utils/bench/inputs.py, generated on first use (or any folder
of that layout, --inputs): ``sysu/{features,pseudo_labels}_{rgb,ir}.npy`` and ``sysu/train_{rgb,ir}_resized_label.npy``.
Times :func:`clustering.mmlm.multi_memory_matching` (best of ``--repeats`` after one warm-up run) and
reports the clusters, the seconds and the ARI against ground truth before / after matching.
``--compare-released`` also runs a released-style reference (one sklearn KMeans per cluster, then
the greedy double loop over cluster pairs with 4×4 memory distances, skipping no cluster) and
reports its time and the fraction of visible clusters given the same partner.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def load_inputs(folder: str) -> dict:
    """The SYSU benchmark arrays of ``folder``/sysu as a dict of numpy arrays."""
    sub = os.path.join(folder, "sysu")
    names = ("features_rgb", "features_ir", "pseudo_labels_rgb", "pseudo_labels_ir",
             "train_rgb_resized_label", "train_ir_resized_label")
    missing = [n for n in names if not os.path.exists(os.path.join(sub, n + ".npy"))]
    if missing:
        raise SystemExit(f"missing {missing} in {sub}; a folder of utils/bench/inputs.py's layout is needed")
    return {n: np.load(os.path.join(sub, n + ".npy")) for n in names}


def released_memories(features: np.ndarray, labels: np.ndarray, n_init: int) -> tuple:
    """Released-style sub-clustering: one sklearn KMeans(4, n_init, random_state=0) per cluster.

    Returns (ids (K,), memories (K, 4, D)); clusters with < 4 members repeat their members (as our
    implementation does; the release used the mean).  Every cluster takes part.
    """
    from sklearn.cluster import KMeans

    ids = np.unique(labels[labels >= 0])
    mems = []
    for cid in ids:                      # the released per-cluster loop, kept on purpose
        x = features[labels == cid]
        if len(x) < 4:
            mems.append(x[np.arange(4) % len(x)])
        else:
            mems.append(KMeans(n_clusters=4, n_init=n_init, random_state=0).fit(x).cluster_centers_)
    return ids, np.stack(mems)


def released_greedy(mem_rgb: np.ndarray, mem_ir: np.ndarray) -> np.ndarray:
    """Released-style greedy matching: Python double loop over (RGB, IR) cluster pairs.

    cost(v, r) = Σ_i min_j ‖c^r_i − c^v_j‖₂ from a 4×4 distance matrix; the first r of least cost
    wins (no start threshold).  Returns the partner index of each RGB cluster.
    """
    partner = np.full(len(mem_rgb), -1, dtype=np.int64)
    for v in range(len(mem_rgb)):
        best = np.inf
        for r in range(len(mem_ir)):
            d = np.linalg.norm(mem_ir[r][:, None, :] - mem_rgb[v][None, :, :], axis=-1)
            c = d.min(axis=1).sum()
            if c < best:
                best, partner[v] = c, r
    return partner


def time_ours(data: dict, args) -> tuple:
    """Warm-up + best-of-``args.repeats`` wall time of multi_memory_matching; returns (labels, info, best, cpu)."""
    from clustering.mmlm import MatchOptions, multi_memory_matching

    def run():
        """One full MMLM call on the benchmark arrays."""
        return multi_memory_matching(
            data["features_rgb"], data["pseudo_labels_rgb"], data["features_ir"], data["pseudo_labels_ir"],
            MatchOptions(matching=args.matching, cost=args.cost, seed=0, n_init=args.n_init),
            device=args.device, return_info=True)

    run()                                                # warm-up
    best, best_cpu = np.inf, np.inf
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        labels, info = run()
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    return labels, info, best, best_cpu


def memory_agreement(features: np.ndarray, labels: np.ndarray, reference: np.ndarray, args) -> str:
    """'equal/total' clusters whose batched memories equal the per-cluster sklearn ones (row order free)."""
    from clustering.mmlm import cluster_memories

    ours, _ = cluster_memories(features, labels, n_init=args.n_init, device=args.device)
    ours = np.sort(ours.cpu().numpy().astype(np.float64), axis=1)    # per-coordinate sort: order-free
    ref = np.sort(reference.astype(np.float64), axis=1)
    equal = np.all(np.abs(ours - ref) <= 1e-4, axis=(1, 2))
    return f"{int(equal.sum())}/{len(equal)}"


def compare_released(data: dict, info: dict, args) -> None:
    """Run the released-style reference once and print its time and the partner agreement."""
    t = time.perf_counter()
    ids_v, mem_v = released_memories(data["features_rgb"], data["pseudo_labels_rgb"], args.n_init)
    ids_r, mem_r = released_memories(data["features_ir"], data["pseudo_labels_ir"], args.n_init)
    t_km = time.perf_counter() - t
    partner = released_greedy(mem_v.astype(np.float64), mem_r.astype(np.float64))
    t_all = time.perf_counter() - t
    same = np.mean(partner == info["partner"]) if len(partner) else float("nan")
    print(f"memories equal to the reference (same set of 4 centres, atol 1e-4): "
          f"RGB {memory_agreement(data['features_rgb'], data['pseudo_labels_rgb'], mem_v, args)}, "
          f"IR {memory_agreement(data['features_ir'], data['pseudo_labels_ir'], mem_r, args)}")
    print(f"released-style reference: {t_all:.2f} s (per-cluster sklearn k-means {t_km:.2f} s, "
          f"python matching loop {t_all - t_km:.2f} s)")
    if args.matching != "greedy" or args.cost != "ir2rgb":
        print("  (reference is greedy/ir2rgb; agreement compares different rules)")
    print(f"partner agreement with the reference: {same:.4f} "
          f"({int(np.sum(partner == info['partner']))}/{len(partner)} visible clusters)")


def parse_args(argv=None):
    """Command-line flags (see --help)."""
    from utils.bench.inputs import add_input_flags  # project modules after the sys.path fix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_flags(ap, "benchmark inputs", "SYSU-MM01 training size")
    ap.add_argument("--device", default="cpu", help="torch device for k-means and costs (default: %(default)s)")
    ap.add_argument("--n-init", type=int, default=10, help="k-means restarts per cluster (default: %(default)s)")
    ap.add_argument("--matching", default="greedy", choices=("greedy", "hungarian"),
                    help="matching rule: greedy (released) or hungarian (paper) (default: %(default)s)")
    ap.add_argument("--cost", default="ir2rgb", choices=("ir2rgb", "rgb2ir"),
                    help="Chamfer cost direction: ir2rgb (released) or rgb2ir (paper) (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up; best is reported "
                    "(default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads(N) if N > 0 (default: torch's choice)")
    ap.add_argument("--compare-released", action="store_true",
                    help="also run the released-style per-cluster sklearn loop + Python matching and "
                         "report its time and the partner agreement (slow: ~20 s or more)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    """Entry point: load, time, report ARI, optionally compare with the released-style loop."""
    import torch
    from clustering.ari import matching_ari
    from utils.bench.inputs import ensure_inputs

    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = load_inputs(ensure_inputs(args.inputs, args.size))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f}")
    labels, info, best, cpu = time_ours(data, args)
    print(f"clusters: RGB {info['num_clusters_rgb']}, IR {info['num_clusters_ir']} "
          f"({len(data['features_rgb'])} + {len(data['features_ir'])} samples, "
          f"D={data['features_rgb'].shape[1]})")
    print(f"multi_memory_matching ({args.matching}, {args.cost}, n_init={args.n_init}): "
          f"best of {args.repeats} = {best:.3f} s wall ({cpu:.3f} s CPU)")
    print(f"IR clusters without a visible partner: {info['ir_unmatched']}, "
          f"visible clusters sharing a partner: {info['rgb_shared']}")
    before = matching_ari(data["pseudo_labels_rgb"], data["train_rgb_resized_label"],
                        data["pseudo_labels_ir"], data["train_ir_resized_label"])
    after = matching_ari(labels, data["train_rgb_resized_label"],
                       data["pseudo_labels_ir"], data["train_ir_resized_label"])
    for name, ari in (("before matching", before), ("after matching ", after)):
        print(f"ARI {name}: rgb {ari['ari_rgb']:.4f}  ir {ari['ari_ir']:.4f}  joint {ari['ari_joint']:.4f}")
    if args.compare_released:
        compare_released(data, info, args)


if __name__ == "__main__":
    main()
