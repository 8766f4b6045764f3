"""Benchmark Jaccard + DBSCAN pseudo-labelling (clustering.dbscan.pseudo_labels) on SYSU/RegDB-size inputs.

Examples (the inputs come from utils/bench/inputs.py, generated on first use):
    python scripts/bench_clustering.py
    python scripts/bench_clustering.py --size small                      # an eighth of the size, a quick check
    python scripts/bench_clustering.py --cases sysu_rgb sysu_joint --repeat 3
    python scripts/bench_clustering.py --cases regdb_rgb --check-dense regdb_rgb

Every case runs in a fresh subprocess: "seconds" is the wall time of pseudo_labels (time.perf_counter, the
best of --repeat runs), "peak MB" is the growth of the process's max RSS over its RSS just before the first
run (features already loaded), "proc MB" the whole process's max RSS (Python, torch and the features
included). "ARI" compares the labels with the ground-truth ids of the inputs (outliers
count as one extra cluster, as in mmlm.py). With --check-dense the labels are also compared with sklearn's
DBSCAN on the dense Jaccard matrix (compute_jaccard_distance(sparse=False)), as the released code does it.
"cpu s" is the process CPU time; on a machine shared with other jobs, OpenMP threads that wait for a core
inflate both columns, and OMP_NUM_THREADS=1 gives the more stable (single-core) numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# name: (dataset, modalities, eps, k1, k2, target seconds, target MB) — D.1 / D.3 / D.4 settings.
CASES = {
    "sysu_rgb": ("sysu", ("rgb",), 0.6, 30, 6, 15.0, 1500.0),
    "sysu_ir": ("sysu", ("ir",), 0.6, 30, 6, 5.0, None),
    "sysu_joint": ("sysu", ("rgb", "ir"), 0.6, 40, 32, 45.0, 3000.0),
    "regdb_rgb": ("regdb", ("rgb",), 0.3, 30, 6, None, None),
    "regdb_ir": ("regdb", ("ir",), 0.3, 30, 6, None, None),
    "regdb_joint": ("regdb", ("rgb", "ir"), 0.3, 38, 18, None, None),
}
DEFAULT_CASES = ["sysu_rgb", "sysu_ir", "sysu_joint", "regdb_rgb", "regdb_ir", "regdb_joint"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of this script."""
    from utils.bench.inputs import add_input_flags  # project modules after the sys.path fix

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_flags(p, "benchmark inputs", "SYSU-MM01/RegDB training sizes")
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=sorted(CASES),
                   help="cases to run (default: all); joint = modality-balanced clustering of rgb+ir")
    p.add_argument("--knn", default="torch", choices=("torch", "faiss"), help="neighbour search backend")
    p.add_argument("--device", default=None, help="torch device for the search (default: cpu)")
    p.add_argument("--repeat", type=int, default=1, help="runs per case; the best time is reported")
    p.add_argument("--check-dense", nargs="*", default=["regdb_rgb", "regdb_joint"], metavar="CASE",
                   help="cases whose labels are compared with DBSCAN on the dense matrix "
                        "(default: regdb_rgb regdb_joint; needs N²·4 bytes per case)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return p


def _current_rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux /proc; falls back to the max RSS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return _max_rss_mb()


def _max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (ru_maxrss is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_case(inputs: str, name: str):
    """(features (N, 2048) float32, modality or None, ground-truth ids) of one case."""
    import numpy as np
    dataset, mods = CASES[name][:2]
    feats, gts = [], []
    for m in mods:
        feats.append(np.load(os.path.join(inputs, dataset, f"features_{m}.npy")))
        gts.append(np.load(os.path.join(inputs, dataset, f"train_{m}_resized_label.npy")))
    modality = None
    if len(mods) == 2:
        modality = np.concatenate([np.full(len(f), i, dtype=np.int64) for i, f in enumerate(feats)])
    features = feats[0] if len(feats) == 1 else np.concatenate(feats)
    return features, modality, np.concatenate(gts)


def run_worker(args) -> dict:
    """Run one case in this process and return its measurements."""
    import numpy as np
    import torch
    from sklearn.metrics import adjusted_rand_score

    from clustering.dbscan import cluster_stats, pseudo_labels
    name = args.worker
    _, _, eps, k1, k2, _, _ = CASES[name]
    features, modality, gt = _load_case(args.inputs, name)
    rss0 = _current_rss_mb()
    times = []
    for _ in range(max(1, args.repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        labels = pseudo_labels(features, eps, k1=k1, k2=k2, min_samples=4, modality=modality,
                               knn=args.knn, device=args.device)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    best = min(times)
    proc_mb = _max_rss_mb()  # before the optional dense check below
    res = dict(case=name, n=int(len(features)), seconds=best[0], cpu_seconds=best[1], peak_mb=proc_mb - rss0,
               proc_peak_mb=proc_mb,
               ari=float(adjusted_rand_score(gt, labels)), threads=torch.get_num_threads(), **cluster_stats(labels))
    if name in (args.check_dense or []):
        from sklearn.cluster import DBSCAN

        from clustering.jaccard import compute_jaccard_distance
        dense = compute_jaccard_distance(features, k1, k2, modality=modality, knn=args.knn, device=args.device)
        ref = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense)
        res["dense_equal"] = bool(np.array_equal(ref, labels))
    return res


def _run_case(args, name: str) -> dict:
    """Run one case in a fresh interpreter (so max RSS is per case) and parse its JSON line."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--inputs", args.inputs,
           "--knn", args.knn, "--repeat", str(args.repeat), "--check-dense", *(args.check_dense or [])]
    if args.device:
        cmd += ["--device", args.device]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _format_table(results) -> str:
    """Plain-text table of the results, with the targets of the brief where they exist."""
    head = (f"{'case':<12} {'N':>6} {'seconds':>8} {'cpu s':>7} {'peak MB':>8} {'proc MB':>8} {'target':>13} "
            f"{'clusters':>8} {'outliers':>8} {'ARI':>6} {'dense==':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        t_s, t_mb = CASES[r["case"]][5:]
        target = f"{t_s or '-'}s/{t_mb or '-'}MB" if t_s else "-"
        dense = {True: "yes", False: "NO"}.get(r.get("dense_equal"), "-")
        lines.append(f"{r['case']:<12} {r['n']:>6} {r['seconds']:>8.2f} {r['cpu_seconds']:>7.1f} "
                     f"{r['peak_mb']:>8.0f} {r['proc_peak_mb']:>8.0f} {target:>13} {r['num_clusters']:>8} {r['num_outliers']:>8} "
                     f"{r['ari']:>6.3f} {dense:>7}")
    return "\n".join(lines)


def main(argv=None):
    """Run the benchmark (or, with the internal --worker flag, a single case) and print the table."""
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return None
    from utils.bench.inputs import ensure_inputs  # project modules after the sys.path fix, as above

    args.inputs = ensure_inputs(args.inputs, args.size)
    results = []
    for name in args.cases:
        results.append(_run_case(args, name))
        print(f"done {name}: {results[-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
    print(_format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
