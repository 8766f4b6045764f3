"""Benchmark utils.evaluation.metrics against a straightforward per-query reference and check equality.

eval_sysu is timed over the 10 SYSU gallery trials and eval_regdb on one RegDB trial; the
same inputs go through a per-query loop implementation, and both results must agree.

Inputs are the synthetic test matrices of utils/bench/inputs.py, generated on first use
(``sysu_test/distmat_trial{0..9}.npy``: 3,803 x 301; ``regdb_test/distmat.npy``: 2,060 x 2,060), or a
folder of the same layout from elsewhere (--inputs, or --bench-features to generate it with an external
bench_features.py).

    python scripts/bench_eval.py [--inputs DIR] [--repeat 5] [--size small]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANKS = (1, 5, 10, 20)
TOLERANCE = 1e-12


def reference_eval(distmat, q_pids, g_pids, q_camids=None, g_camids=None, max_rank=20,
                   distinct=False) -> Tuple[np.ndarray, float, float]:
    """Per-query loop in the style of the released ``eval_sysu``/``eval_regdb``, with a stable
    sort and a padded CMC (the behaviour utils.evaluation.metrics documents). ``distinct`` selects the
    SYSU distinct-identity CMC; camids enable the SYSU cam-3/cam-2 removal."""
    order_all = np.argsort(distmat, axis=1, kind="stable")
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = order_all[i]
        if q_camids is not None:
            order = order[~((q_camids[i] == 3) & (g_camids[order] == 2))]
        ids = g_pids[order]
        match = (ids == q_pids[i]).astype(np.int64)
        if not match.any():
            continue
        if distinct:
            first = np.sort(np.unique(ids, return_index=True)[1])
            hits = (ids[first] == q_pids[i]).cumsum()
        else:
            hits = match.cumsum()
        cmc = np.minimum(hits, 1)[:max_rank].astype(np.float64)
        cmcs.append(np.concatenate([cmc, np.full(max_rank - cmc.size, cmc[-1])]))
        cum = match.cumsum()
        aps.append(float((cum / np.arange(1, match.size + 1) * match).sum() / match.sum()))
        inps.append(float(match.sum() / (np.flatnonzero(match).max() + 1.0)))
    if not cmcs:
        raise ValueError("no valid query")
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps))


def ensure_inputs(inputs: Optional[str], bench_features: Optional[str], size: Optional[str]) -> str:
    """The input folder: made by utils.bench.inputs (default), or with an external bench_features.py's
    generate() when ``bench_features`` is given and the folder has no manifest.json. Returns the folder."""
    from utils.bench.inputs import default_folder, ensure_inputs as generate_own  # after main's sys.path fix

    if bench_features is None:
        return generate_own(inputs, size)
    inputs = inputs or default_folder(size)
    if os.path.exists(os.path.join(inputs, "manifest.json")):
        return inputs
    if not os.path.isfile(bench_features):
        raise SystemExit(f"error: {inputs} has no manifest.json and the generator "
                         f"{bench_features} does not exist")
    spec = importlib.util.spec_from_file_location("mmm_bench_features", bench_features)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"generating benchmark inputs into {inputs} ...", flush=True)
    module.generate(inputs)
    return inputs


def load_inputs(inputs: str):
    """-> (sysu dict with 'distmats' list + id/camera arrays, regdb dict)."""
    def ld(rel):
        """np.load of a path relative to ``inputs``."""
        return np.load(os.path.join(inputs, rel))
    trials = sorted(f for f in os.listdir(os.path.join(inputs, "sysu_test"))
                    if f.startswith("distmat_trial"))
    sysu = dict(distmats=[ld(os.path.join("sysu_test", f)) for f in trials],
                q_pids=ld("sysu_test/q_pids.npy"), g_pids=ld("sysu_test/g_pids.npy"),
                q_camids=ld("sysu_test/q_camids.npy"), g_camids=ld("sysu_test/g_camids.npy"))
    regdb = dict(distmat=ld("regdb_test/distmat.npy"), q_pids=ld("regdb_test/q_pids.npy"),
                 g_pids=ld("regdb_test/g_pids.npy"))
    return sysu, regdb


def best_time(fn: Callable[[], List], repeat: int) -> Tuple[float, float, List]:
    """Best wall-clock and best CPU (process) seconds over ``repeat`` calls, and the results.

    CPU time is printed too because on a shared machine wall time also measures other jobs.
    """
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(max(1, repeat)):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, out


def mean_result(results: List) -> Tuple[np.ndarray, float, float]:
    """Average (cmc, mAP, mINP) over trials (the reported SYSU number is the trial mean)."""
    return (np.mean([r[0] for r in results], axis=0), float(np.mean([r[1] for r in results])),
            float(np.mean([r[2] for r in results])))


def max_diff(a: List, b: List) -> float:
    """Largest absolute difference between two lists of (cmc, mAP, mINP) results."""
    return max(max(float(np.abs(x[0] - y[0]).max()), abs(x[1] - y[1]), abs(x[2] - y[2]))
               for x, y in zip(a, b))


def fmt_row(name: str, wall: float, cpu: float, res) -> str:
    """One table line: wall and CPU seconds, then R1/R5/R10/R20, mAP, mINP in percent."""
    cmc, mAP, mINP = res
    vals = [100 * cmc[r - 1] if r <= cmc.size else float("nan") for r in RANKS]
    vals += [100 * mAP, 100 * mINP]
    return f"{name:<34}{wall:>9.3f}{cpu:>9.3f}" + "".join(f"{v:>8.2f}" for v in vals)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    from utils.bench.inputs import add_input_flags  # project modules after the sys.path fix

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_flags(p, "benchmark inputs with manifest.json, sysu_test/ and regdb_test/", "SYSU-MM01/RegDB test sizes")
    p.add_argument("--bench-features", default=None,
                   help="an external bench_features.py whose generate(DIR) writes the inputs instead "
                        "(default: none, utils/bench/inputs.py)")
    p.add_argument("--repeat", type=int, default=5,
                   help="timed runs of the vectorised metrics; the best is reported (default 5)")
    p.add_argument("--max-rank", type=int, default=20, help="CMC length (default 20)")
    p.add_argument("--skip-reference", action="store_true",
                   help="do not run the slow per-query reference (no equivalence check)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; returns 0, or 1 if the two implementations disagree."""
    if REPO_ROOT not in sys.path:  # before build_parser: its input flags come from utils/bench/inputs.py
        sys.path.insert(0, REPO_ROOT)
    args = build_parser().parse_args(argv)
    from utils.evaluation.metrics import eval_regdb, eval_sysu

    sysu, regdb = load_inputs(ensure_inputs(args.inputs, args.bench_features, args.size))
    ids = (sysu["q_pids"], sysu["g_pids"], sysu["q_camids"], sysu["g_camids"])
    rid = (regdb["q_pids"], regdb["g_pids"])
    runs = {
        "sysu": (lambda: [eval_sysu(d, *ids, max_rank=args.max_rank) for d in sysu["distmats"]],
                 lambda: [reference_eval(d, *ids, max_rank=args.max_rank, distinct=True)
                          for d in sysu["distmats"]]),
        "regdb": (lambda: [eval_regdb(regdb["distmat"], *rid, max_rank=args.max_rank)],
                  lambda: [reference_eval(regdb["distmat"], *rid, max_rank=args.max_rank)]),
    }
    label = {"sysu": f"SYSU x{len(sysu['distmats'])} {sysu['distmats'][0].shape}",
             "regdb": f"RegDB {regdb['distmat'].shape}"}
    print(f"{'':<34}{'wall s':>9}{'cpu s':>9}" + "".join(f"{'R' + str(r):>8}" for r in RANKS)
          + f"{'mAP':>8}{'mINP':>8}")
    status = 0
    for key, (fast, ref) in runs.items():
        wall, cpu, res_fast = best_time(fast, args.repeat)
        print(fmt_row(f"{label[key]} vectorised", wall, cpu, mean_result(res_fast)), flush=True)
        if args.skip_reference:
            continue
        ref_wall, ref_cpu, res_ref = best_time(ref, 1)
        diff = max_diff(res_fast, res_ref)
        print(fmt_row(f"{label[key]} per-query", ref_wall, ref_cpu, mean_result(res_ref)))
        print(f"{'':<34}speed-up x{ref_wall / wall:.1f} (wall), x{ref_cpu / cpu:.1f} (cpu); "
              f"max |diff| over trials {diff:.1e} (tolerance {TOLERANCE:.0e})", flush=True)
        if diff > TOLERANCE:
            print(f"MISMATCH on {key}: max |diff| {diff:.3e} > {TOLERANCE}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
