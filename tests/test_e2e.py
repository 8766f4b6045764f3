"""End-to-end runs through the real entry points (``baseline_sysu.py``, ``baseline_regdb.py``,
``main.py``, ``test.py``) as subprocesses, on small generated datasets, on the CPU.

What is covered (issues 3, 4 and 5, "Done when"):

* a two-epoch stage-1 run of each baseline script, killed (SIGKILL) after a checkpoint and continued
  with ``--resume`` (SYSU is killed in the intra phase, RegDB in the joint phase, so both resume
  paths run); a rerun without ``--resume`` into the finished run directory is refused;
* the stage-1 artifact round trip: paths against the dataset listing, shapes, metadata, the labels
  against a re-clustering of the stored features, the features against ``final.pth``, and the
  by-path alignment stage 2 uses;
* a two-epoch ``main.py`` run from the stage-1 checkpoint, interrupted with Ctrl-C (SIGINT) after
  its first epoch and resumed;
* ``test.py`` on a stage-2 checkpoint (SYSU, 10 gallery trials) and a stage-1 checkpoint (RegDB,
  both directions), its JSON checked and cross-checked against the evaluation logged in training;
* refusals, each exit status 2 with one ``error:`` line on stderr and no traceback: ``test.py`` on a
  missing file, a non-checkpoint, another dataset's checkpoint, another ``--arch``; ``main.py`` on
  an artifact of another dataset or trial, a checkpoint of another dataset, an artifact whose
  image paths do not match the data on disk.

How it is run: one module fixture (:func:`e2e`) generates the data and runs every subprocess as a
background job, two at a time (each subprocess uses one thread, so a 2-core machine runs two):
the SYSU chain (stage 1 -> stage 2 -> test.py) and the RegDB chain (stage 1 -> a second resume)
start together, and the short runs (test.py, refusals) fill the core that frees first. The tests
only check what the jobs left behind; a job's failure is raised in the tests that need it. Any
selection of tests from this module therefore costs the whole module (about 2-3 minutes).

Interruptions wait for a checkpoint *and* its metrics line before sending the signal, so the kill
never depends on timing (the next write is a whole epoch away); the window between those two
writes is tested on its own, deterministically (:func:`test_resume_after_kill_between_checkpoint_and_metrics`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Set

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Small but real settings: resnet18 from random weights on 32x16 inputs, batches of 4 pseudo-ids x 4.
TINY = ["--device", "cpu", "--arch", "resnet18", "--img-h", "32", "--img-w", "16", "--workers", "0"]
# Stage 1: 2 epochs per phase, 2 iterations each; evaluation at the second epoch of each phase.
# eps/k1 fit ~10 images per identity (the defaults are for the real datasets' hundreds of images).
STAGE1 = TINY + ["--pretrained", "none", "--epochs", "2", "--iters", "2", "--batch-size", "16",
                 "--num-instances", "4", "--k1", "15", "--eps", "0.45", "--k1-joint", "20",
                 "--k2-joint", "10", "--eval-step", "2", "--report-ari"]
# Stage 2: one warm-up epoch, then one epoch with the GMM, prototypes and all four losses.
# One-to-one (Hungarian) matching and 2 ids per batch: a stage 1 of 2 x 2 iterations from random weights
# leaves only a handful of ir clusters, and how many depends on the CPU's rounding (3 on some machines).
STAGE2 = TINY + ["--epochs", "2", "--warm-epochs", "1", "--lr", "0.02", "--matching", "hungarian",
                 "--batch-ids", "2", "--num-pos", "4", "--eval-step", "2"]
RANKS = ("r1", "r5", "r10", "r20")
METRICS = set(RANKS) | {"mAP", "mINP"}
TIMEOUT = 900  # seconds per subprocess; generous for a loaded machine, only there to stop a hang
# One intra-op thread per subprocess (as conftest.py does in-process): at these tensor sizes a second
# thread gains little, two jobs run side by side, and OpenMP threads competing for cores slow a run
# down several times.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TESTPY_REFUSALS = ("missing", "not_a_checkpoint", "other_dataset", "other_arch")
MAIN_REFUSALS = ("artifact_other_dataset", "artifact_other_trial", "checkpoint_other_dataset",
                 "artifact_paths_not_matching")


# ----------------------------------------------------------------------------------------------
# helpers


_LIVE: Set[subprocess.Popen] = set()   # running subprocesses, killed if the session is interrupted
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()           # set on Ctrl-C: no new subprocess starts


def _start(cmd: List[str], **kwargs) -> subprocess.Popen:
    with _LIVE_LOCK:
        if _STOPPING.is_set():
            raise RuntimeError("test session interrupted")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, text=True, **kwargs)
        _LIVE.add(proc)
    return proc


def _forget(proc: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(proc)


def kill_live() -> None:
    """Kill every subprocess still running and start no new one (Ctrl-C of the test session)."""
    with _LIVE_LOCK:
        _STOPPING.set()
        for proc in _LIVE:
            if proc.poll() is None:
                proc.kill()


def run(script: str, *args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repository root; stdout and stderr captured as text."""
    cmd = [sys.executable, script, *[str(a) for a in args]]
    proc = _start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{script} did not finish within {timeout}s:\n{out[-2000:]}\n{err[-2000:]}") from None
    finally:
        _forget(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def describe(proc: subprocess.CompletedProcess) -> str:
    """The tail of a finished process' output, for assertion messages."""
    return (f"exit {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-3000:]}")


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    """The process exited 0."""
    assert proc.returncode == 0, describe(proc)


def assert_refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, exactly one stderr line ``error: ...`` containing ``fragments``, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, describe(proc)
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(proc)
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"
    return lines[0]


def metrics_lines(run_dir: Path) -> List[Dict]:
    """The records of ``<run_dir>/metrics.jsonl`` (complete lines only)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def phase_epochs(records: List[Dict]) -> List[tuple]:
    """(phase, epoch) of every stage-1 record, in file order."""
    return [(r["phase"], r["epoch"]) for r in records]


def check_metric_dict(m: Dict[str, float], where: str) -> None:
    """The six metrics, percentages in [0, 100], CMC non-decreasing."""
    assert set(m) == METRICS, where
    for k, v in m.items():
        assert 0.0 <= v <= 100.0, f"{where}: {k}={v}"
    assert m["r1"] <= m["r5"] <= m["r10"] <= m["r20"], f"{where}: {m}"


def load_pth(path: Path) -> Dict:
    """A checkpoint as a dict (CPU)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


@dataclass
class Interrupted:
    """What an interrupted run did: its exit status and output, and whether the signal was sent."""

    signalled: bool
    returncode: int
    output: str


def run_and_interrupt(script: str, args: Sequence, checkpoint: Path, run_dir: Path, records: int,
                      sig: int, log: Path, timeout: float = TIMEOUT) -> Interrupted:
    """Start ``script``; once ``checkpoint`` exists and ``metrics.jsonl`` holds ``records`` lines
    (the epoch is completely written), send ``sig`` and wait for the process to end.

    If the process ends first (a crash), ``signalled`` is False and the caller's assertions report it.
    """
    cmd = [sys.executable, script, *[str(a) for a in args]]
    signalled = False
    with open(log, "w") as out:
        proc = _start(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if checkpoint.exists() and len(metrics_lines(run_dir)) >= records:
                    proc.send_signal(sig)
                    signalled = True
                    proc.wait(timeout=120)
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _forget(proc)
    return Interrupted(signalled, proc.returncode, log.read_text())


def _run_state(run_dir: Path) -> Dict:
    """Which stage-1 files exist and which epochs are logged (taken right after a kill)."""
    return {"final": (run_dir / "final.pth").exists(), "artifact": (run_dir / "pseudo_labels.npz").exists(),
            "intra_last": (run_dir / "intra" / "last.pth").exists(),
            "joint_last": (run_dir / "joint" / "last.pth").exists(),
            "records": phase_epochs(metrics_lines(run_dir))}


# ----------------------------------------------------------------------------------------------
# the runs (module fixture)


@dataclass
class Synth:
    """Roots of the generated datasets."""

    sysu: Path
    regdb: Path


@dataclass
class Stage1:
    """A stage-1 run: killed once, then resumed."""

    out: Path             # --output-dir
    run_dir: Path         # <out>/<dataset>[_trial<t>]/baseline
    args: List[str]       # the command line (without --resume)
    first: Interrupted    # the killed run
    after_kill: Dict      # state of the run directory right after the kill
    resumed: subprocess.CompletedProcess


@dataclass
class Stage2:
    """The stage-2 run: interrupted once, then resumed."""

    run_dir: Path
    first: Interrupted
    after_kill: Dict
    resumed: subprocess.CompletedProcess


@dataclass
class Window:
    """The RegDB run directory as killed, with its last metrics line dropped, then resumed."""

    run_dir: Path
    lines_before: List[tuple]
    resumed: subprocess.CompletedProcess


class Jobs:
    """Results of the module's background jobs; :meth:`get` returns one or raises its error."""

    def __init__(self):
        self.futures: Dict[str, Future] = {}
        self.done_at: Dict[str, float] = {}   # seconds from the start of the jobs to each one's end

    def get(self, name: str):
        """The job's result (re-raises the job's exception in the calling test)."""
        return self.futures[name].result()


def _settle(fut: Future, fn: Callable, *args):
    """Run ``fn(*args)``, publish the outcome on ``fut`` (for jobs waiting on it), and return it."""
    try:
        result = fn(*args)
    except BaseException as err:
        fut.set_exception(err)
        raise
    fut.set_result(result)
    return result


def _sysu_stage1(synth: Synth, out: Path) -> Stage1:
    """baseline_sysu.py killed (SIGKILL) after intra epoch 0, then continued with --resume."""
    run_dir = out / "sysu" / "baseline"
    args = [str(a) for a in ["--data-dir", synth.sysu, "--output-dir", out, *STAGE1]]
    first = run_and_interrupt("baseline_sysu.py", args, run_dir / "intra" / "last.pth", run_dir, records=1,
                              sig=signal.SIGKILL, log=out / "first_run.txt")
    after = _run_state(run_dir)
    return Stage1(out, run_dir, args, first, after, run("baseline_sysu.py", *args, "--resume"))


def _regdb_stage1(synth: Synth, out: Path, window_out: Path, window: Future) -> Stage1:
    """baseline_regdb.py --trial 1 killed (SIGKILL) after joint epoch 0, then continued with --resume.

    A copy of the run directory as killed, minus its last metrics line (what a kill between the
    checkpoint write and the metrics append leaves), is resumed too; published on ``window``.
    """
    run_dir = out / "regdb_trial1" / "baseline"
    args = [str(a) for a in ["--trial", "1", "--data-dir", synth.regdb, "--output-dir", out, *STAGE1]]
    first = run_and_interrupt("baseline_regdb.py", args, run_dir / "joint" / "last.pth", run_dir, records=3,
                              sig=signal.SIGKILL, log=out / "first_run.txt")
    after = _run_state(run_dir)
    copy = window_out / "regdb_trial1" / "baseline"
    shutil.copytree(run_dir, copy)
    result = Stage1(out, run_dir, args, first, after, run("baseline_regdb.py", *args, "--resume"))

    def resume_copy():
        lines = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
        before = phase_epochs(json.loads(x) for x in lines)
        (copy / "metrics.jsonl").write_text("".join(lines[:-1]))  # last epoch checkpointed, not logged
        moved = [a if a != str(out) else str(window_out) for a in args]
        return Window(copy, before, run("baseline_regdb.py", *moved, "--resume"))

    try:
        _settle(window, resume_copy)
    except Exception:  # reported by the test of the copy, not by the stage-1 tests
        pass
    return result


def _sysu_stage2(synth: Synth, stage1: Future, out: Path, testpy: Future) -> Stage2:
    """main.py from the SYSU final.pth, interrupted with SIGINT after epoch 0, resumed; then test.py
    on its best.pth (published on ``testpy``)."""
    s1: Stage1 = stage1.result()
    assert_ok(s1.resumed)
    run_dir = out / "sysu" / "mmm"
    args = ["--dataset", "sysu", "--data-dir", synth.sysu, "--output-dir", out,
            "--resume_net1", s1.run_dir / "final.pth", "--report-ari", *STAGE2]
    first = run_and_interrupt("main.py", args, run_dir / "last.pth", run_dir, records=1, sig=signal.SIGINT,
                              log=out / "first_run.txt")
    after = {"records": [r["epoch"] for r in metrics_lines(run_dir)]}
    result = Stage2(run_dir, first, after, run("main.py", *args, "--resume"))
    try:
        _settle(testpy, lambda: run("test.py", "--dataset", "sysu", "--data-dir", synth.sysu,
                                    "--resume-net1", run_dir / "best.pth", *TINY))
    except Exception:  # reported by the test.py test, not by the stage-2 test
        pass
    return result


def _rerun_without_resume(stage1: Future):
    """baseline_sysu.py again into the finished run directory, without --resume; files before/after."""
    s1: Stage1 = stage1.result()
    assert_ok(s1.resumed)
    names = ("metrics.jsonl", "log.txt", "args.json")
    before = {n: (s1.run_dir / n).read_bytes() for n in names}
    proc = run("baseline_sysu.py", *s1.args)
    return proc, before, {n: (s1.run_dir / n).read_bytes() for n in names}


def _testpy_regdb(synth: Synth, stage1: Future, out: Path):
    """test.py --flip on the RegDB stage-1 final.pth, JSON written to --out."""
    s1: Stage1 = stage1.result()
    assert_ok(s1.resumed)
    return run("test.py", "--dataset", "regdb", "--trial", "1", "--data-dir", synth.regdb, "--flip",
               "--resume-net1", s1.run_dir / "final.pth", "--out", out / "regdb.json", *TINY), out / "regdb.json"


def _testpy_refusal(case: str, synth: Synth, sysu1: Future, regdb1: Future, out: Path):
    """test.py --dataset sysu on a checkpoint it must refuse; returns (process, --out path)."""
    if case == "missing":
        ckpt, extra = out / "nope.pth", []
    elif case == "not_a_checkpoint":
        ckpt, extra = out / "model.pth", []
        ckpt.write_bytes(b"\x00 definitely not a torch checkpoint \x00" * 10)
    elif case == "other_dataset":
        ckpt, extra = regdb1.result().run_dir / "final.pth", []
    else:  # other_arch
        ckpt, extra = sysu1.result().run_dir / "final.pth", ["--arch", "resnet50"]
    if case in ("other_dataset", "other_arch"):
        assert ckpt.is_file()
    flags = ["--device", "cpu", "--img-h", "32", "--img-w", "16", "--workers", "0"]
    return run("test.py", "--dataset", "sysu", "--data-dir", synth.sysu, "--resume-net1", ckpt,
               "--out", out / "result.json", *flags, *extra), out / "result.json"


def _main_refusal(case: str, synth: Synth, sysu1: Future, regdb1: Future, out: Path):
    """main.py on a stage-1 checkpoint/artifact it must refuse."""
    s1, r1 = sysu1.result(), regdb1.result()
    extra: List = []
    if case == "artifact_other_dataset":    # SYSU run on the SYSU checkpoint with the RegDB artifact
        dataset, root, trial, ckpt = "sysu", synth.sysu, None, s1.run_dir / "final.pth"
        extra = ["--baseline-artifact", r1.run_dir / "pseudo_labels.npz"]
    elif case == "artifact_other_trial":    # RegDB trial 2 on the trial-1 run
        dataset, root, trial, ckpt = "regdb", synth.regdb, 2, r1.run_dir / "final.pth"
    elif case == "checkpoint_other_dataset":  # the right SYSU artifact, the RegDB network
        dataset, root, trial, ckpt = "sysu", synth.sysu, None, r1.run_dir / "final.pth"
        extra = ["--baseline-artifact", s1.run_dir / "pseudo_labels.npz", "--matching", "hungarian",
                 "--batch-ids", "2"]  # as STAGE2: the check under test comes after the matching
    else:  # artifact_paths_not_matching: the same SYSU data with one visible training image fewer
        dataset, root, trial, ckpt = "sysu", out / "sysu_copy", None, s1.run_dir / "final.pth"
        shutil.copytree(synth.sysu, root)
        with np.load(s1.run_dir / "pseudo_labels.npz") as art:
            (root / str(art["paths_rgb"][0])).unlink()
    args = ["--dataset", dataset, "--data-dir", root, "--output-dir", out / "logs", "--resume-net1", ckpt,
            *TINY, "--epochs", "1", *extra]
    if trial is not None:
        args += ["--trial", trial]
    return run("main.py", *args)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Synth:
    """SYSU-MM01 layout with 24 ids (22 train+val, 6 test) and RegDB layout with 16 persons, 64x32."""
    from data.synthetic import generate_regdb, generate_sysu

    base = tmp_path_factory.mktemp("e2e_data")
    generate_sysu(str(base / "sysu"), ids=24, seed=0, height=64, width=32)
    generate_regdb(str(base / "regdb"), ids=16, seed=0, height=64, width=32)
    return Synth(sysu=base / "sysu", regdb=base / "regdb")


def _sysu_chain(synth: Synth, logs: Path, mmm: Path, stage1: Future, testpy: Future) -> Stage2:
    """Stage 1 (published on ``stage1``), then stage 2 and test.py."""
    _settle(stage1, _sysu_stage1, synth, logs)
    return _sysu_stage2(synth, stage1, mmm, testpy)


def _chain(fn: Callable, *args, pending: Sequence[Future]):
    """Run a chain of steps; on its way out settle the futures it did not reach, so that no job
    or test waits for them forever (they report the earlier failure instead)."""
    try:
        return fn(*args)
    finally:
        for fut in pending:
            if not fut.done():
                fut.set_exception(RuntimeError("not run: an earlier step of its chain failed (see that test)"))


@pytest.fixture(scope="module")
def e2e(synth, tmp_path_factory) -> Jobs:
    """Every subprocess of the module, two at a time; returns once all have finished.

    Job names: sysu_stage1, sysu_stage2, testpy_sysu, regdb_stage1, regdb_window,
    rerun_without_resume, testpy_regdb, testpy_<case>, main_<case>.
    """
    d = {n: tmp_path_factory.mktemp(n) for n in ("sysu_logs", "regdb_logs", "regdb_window", "sysu_mmm",
                                                   "testpy_regdb", "refusals")}
    jobs = Jobs()
    f = jobs.futures
    start = time.monotonic()
    for name in ("sysu_stage1", "testpy_sysu", "regdb_window"):
        f[name] = Future()  # published by the chains below
    with ThreadPoolExecutor(max_workers=2) as pool:
        # the two long chains first, so that each takes a worker at once
        f["sysu_stage2"] = pool.submit(_chain, _sysu_chain, synth, d["sysu_logs"], d["sysu_mmm"], f["sysu_stage1"],
                                       f["testpy_sysu"], pending=[f["sysu_stage1"], f["testpy_sysu"]])
        f["regdb_stage1"] = pool.submit(_chain, _regdb_stage1, synth, d["regdb_logs"], d["regdb_window"],
                                        f["regdb_window"], pending=[f["regdb_window"]])
        # short runs: whichever worker frees first takes the next one
        f["rerun_without_resume"] = pool.submit(_rerun_without_resume, f["sysu_stage1"])
        f["testpy_regdb"] = pool.submit(_testpy_regdb, synth, f["regdb_stage1"], d["testpy_regdb"])
        for case in TESTPY_REFUSALS:
            out = d["refusals"] / f"testpy_{case}"
            out.mkdir()
            f[f"testpy_{case}"] = pool.submit(_testpy_refusal, case, synth, f["sysu_stage1"], f["regdb_stage1"], out)
        for case in MAIN_REFUSALS:
            out = d["refusals"] / f"main_{case}"
            out.mkdir()
            f[f"main_{case}"] = pool.submit(_main_refusal, case, synth, f["sysu_stage1"], f["regdb_stage1"], out)
        for name, fut in f.items():
            fut.add_done_callback(lambda _, name=name: jobs.done_at.__setitem__(name, time.monotonic() - start))
        try:
            wait(list(f.values()))
        except BaseException:  # Ctrl-C: do not leave the workers running minutes-long jobs
            pool.shutdown(wait=False, cancel_futures=True)
            kill_live()
            raise
    print(f"\ne2e jobs: {time.monotonic() - start:.0f}s wall for all; per job (s, from the start): " +
          ", ".join(f"{k} {v:.0f}" for k, v in sorted(jobs.done_at.items(), key=lambda kv: kv[1])))
    return jobs


# ----------------------------------------------------------------------------------------------
# stage 1


def _check_stage1_resume(s: Stage1, killed_in: str) -> List[Dict]:
    """Assertions shared by both baseline scripts; returns the metrics records."""
    # the first run really was interrupted before the end
    assert s.first.signalled and s.first.returncode == -signal.SIGKILL, s.first.output[-3000:]
    assert not s.after_kill["final"] and not s.after_kill["artifact"], s.after_kill
    assert s.after_kill[f"{killed_in}_last"], s.after_kill
    # the rerun with --resume continued it
    assert_ok(s.resumed)
    assert "Traceback" not in s.resumed.stderr
    log = (s.run_dir / "log.txt").read_text()
    assert f"resumed {killed_in} phase from" in log and "resuming" in log, log
    for phase, epoch in s.after_kill["records"]:  # epochs finished before the kill are not run again
        assert f"[{phase} {epoch}/2] lr" not in s.resumed.stdout, s.resumed.stdout[-3000:]
    records = metrics_lines(s.run_dir)
    assert phase_epochs(records) == [("intra", 1), ("intra", 2), ("joint", 1), ("joint", 2)]  # 1-based
    for name in ("final.pth", "pseudo_labels.npz", "pseudo_labels.json", "args.json",
                 "intra/last.pth", "joint/last.pth"):
        assert (s.run_dir / name).is_file(), name
    for r in records:
        for key in ("rgb_clusters", "ir_clusters", "rgb_outliers", "ir_outliers", "lr", "seconds",
                    "ari_rgb", "ari_ir"):
            assert key in r, (key, r)
        assert -1.0 <= r["ari_rgb"] <= 1.0 and -1.0 <= r["ari_ir"] <= 1.0
        assert ("joint_clusters" in r and "ari_joint" in r) == (r["phase"] == "joint"), r
    assert any("loss_rgb" in r and "loss_ir" in r for r in records if r["phase"] == "intra"), \
        "no intra epoch trained (too few clusters?)"
    evaluated = [r for r in records if "eval" in r]
    assert [(r["phase"], r["epoch"]) for r in evaluated] == [("intra", 2), ("joint", 2)]  # --eval-step 2
    for r in evaluated:
        for name, m in r["eval"].items():
            check_metric_dict(m, f"{r['phase']} {r['epoch']} {name}")
    return records


def test_baseline_sysu_resume_after_interruption(e2e):
    """baseline_sysu.py: SIGKILL in the intra phase, --resume finishes every epoch exactly once."""
    s: Stage1 = e2e.get("sysu_stage1")
    records = _check_stage1_resume(s, "intra")
    assert set(records[-1]["eval"]) == {"all-search", "indoor-search"}
    final = load_pth(s.run_dir / "final.pth")
    assert (final["stage"], final["phase"], final["dataset"], final["trial"], final["arch"]) == \
        ("baseline", "final", "sysu", None, "resnet18")
    last = load_pth(s.run_dir / "joint" / "last.pth")
    assert last["epoch"] == 2 and last["phase"] == "joint" and last["optimizer"] is not None
    args = json.loads((s.run_dir / "args.json").read_text())
    assert args["eps"] == 0.45 and args["epochs"] == 2 and args["dataset"] == "sysu"


def test_baseline_regdb_resume_after_interruption(e2e):
    """baseline_regdb.py --trial 1: SIGKILL in the joint phase; --resume skips the finished intra phase."""
    s: Stage1 = e2e.get("regdb_stage1")
    records = _check_stage1_resume(s, "joint")
    assert "[intra " not in s.resumed.stdout  # the intra phase is not rerun at all
    assert set(records[-1]["eval"]) == {"visible2thermal"}
    final = load_pth(s.run_dir / "final.pth")
    assert (final["stage"], final["dataset"], final["trial"]) == ("baseline", "regdb", 1)


def test_resume_after_kill_between_checkpoint_and_metrics(e2e):
    """The state a kill leaves right after ``joint/last.pth`` (epoch 1) was written but before its
    metrics line: resuming must still give one metrics record per (phase, epoch)."""
    w: Window = e2e.get("regdb_window")
    assert w.lines_before == [("intra", 1), ("intra", 2), ("joint", 1)]
    assert_ok(w.resumed)
    assert phase_epochs(metrics_lines(w.run_dir)) == [("intra", 1), ("intra", 2), ("joint", 1), ("joint", 2)]


def test_baseline_refuses_existing_run_without_resume(e2e):
    """Rerunning into a run directory that holds a run, without --resume: exit 2, nothing touched."""
    s: Stage1 = e2e.get("sysu_stage1")
    proc, before, after = e2e.get("rerun_without_resume")
    assert_refused(proc, str(s.run_dir), "--resume")
    assert after == before


def test_stage1_artifact_round_trip(e2e, synth):
    """pseudo_labels.npz: paths = the dataset listing, shapes, metadata, labels = clustering of the
    stored features, features = the final.pth model's; stage 2's path alignment inverts a shuffle."""
    import torch

    from clustering.dbscan import pseudo_labels
    from data.datasets import load_train
    from model import build_model
    from utils.artifacts import align_to_samples, load_artifact, relative_paths
    from utils.checkpoint import load_checkpoint, load_model_state
    from utils.evaluation.features import extract_features

    s: Stage1 = e2e.get("sysu_stage1")
    assert_ok(s.resumed)
    art = load_artifact(str(s.run_dir / "pseudo_labels.npz"))
    meta = art["meta"]
    assert (meta["dataset"], meta["trial"], meta["eps"], meta["k1"], meta["k2"]) == ("sysu", None, 0.45, 15, 6)
    samples = dict(zip(("rgb", "ir"), load_train("sysu", str(synth.sysu))))
    final = load_checkpoint(str(s.run_dir / "final.pth"))
    model = build_model(arch=final["arch"], num_classes=final["num_classes"], pretrained="none",
                        non_local=final["non_local"])
    load_model_state(model, final, "final.pth")
    for m in ("rgb", "ir"):
        paths, feats, labels = art[f"paths_{m}"], art[f"features_{m}"], art[f"labels_{m}"]
        listing = relative_paths(samples[m], str(synth.sysu))
        assert len(set(paths)) == len(paths) == len(listing)
        assert sorted(paths) == sorted(listing)
        assert all(not os.path.isabs(p) and (synth.sysu / p).is_file() for p in paths)
        assert feats.shape == (len(paths), model.dim) and feats.dtype == np.float32 and np.isfinite(feats).all()
        norms = np.linalg.norm(feats, axis=1)  # mean of two unit vectors, not re-normalised (D.2 step 1)
        assert (norms > 0.5).all() and (norms <= 1 + 1e-5).all()
        assert labels.shape == (len(paths),) and labels.dtype == np.int64
        k = int(labels.max()) + 1
        assert k == meta[f"{m}_clusters"] >= 2 and labels.min() >= -1
        assert set(np.unique(labels[labels >= 0])) == set(range(k))  # contiguous 0..K-1
        assert int((labels < 0).sum()) == meta[f"{m}_outliers"]
        # the stored labels are the clustering (with the stored settings) of the stored features
        again = pseudo_labels(torch.from_numpy(feats), eps=meta["eps"], k1=meta["k1"], k2=meta["k2"])
        np.testing.assert_array_equal(again, labels)
        # the stored features are those of final.pth (flip-averaged, bicubic, as in training)
        by_path = dict(zip(listing, samples[m]))
        pick = [by_path[p] for p in paths[:12]]
        f = extract_features(model, pick, device=torch.device("cpu"), img_h=32, img_w=16,
                             interpolation="bicubic", batch_size=32, workers=0, flip=True,
                             renormalize=False, progress=False)
        np.testing.assert_allclose(f.numpy(), feats[:12], atol=1e-4)
        # stage 2 attaches by path: a shuffled listing gets the same rows back
        order = np.random.default_rng(0).permutation(len(samples[m]))
        shuffled = [samples[m][i] for i in order]
        f_al, l_al = align_to_samples(art, m, shuffled, str(synth.sysu))
        row = {p: i for i, p in enumerate(paths)}
        idx = [row[p] for p in relative_paths(shuffled, str(synth.sysu))]
        np.testing.assert_array_equal(l_al, labels[idx])
        np.testing.assert_array_equal(f_al, feats[idx])


# ----------------------------------------------------------------------------------------------
# stage 2


def test_main_resume_after_interruption(e2e):
    """main.py: Ctrl-C after epoch 1 (exit 130, no traceback), --resume runs epoch 2 only."""
    s: Stage2 = e2e.get("sysu_stage2")
    assert s.first.signalled and s.first.returncode == 130, s.first.output[-3000:]
    assert "interrupted" in s.first.output and "Traceback" not in s.first.output
    assert s.after_kill["records"] == [1], s.after_kill
    assert_ok(s.resumed)
    log = (s.run_dir / "log.txt").read_text()
    assert "resumed from" in log and "epoch 1 was complete, continuing with epoch 2" in log, log
    assert "[mmm 1/2]" not in s.resumed.stdout and "[mmm 2/2]" in s.resumed.stdout
    assert "ARI before matching" in log
    records = metrics_lines(s.run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    warm, train = records
    assert {k for k in warm if k.startswith("loss_")} == {"loss_id"} and "eval" not in warm
    assert {"loss_id", "loss_tri", "loss_intra", "loss_inter"} <= set(train)
    for k in ("v1", "v2", "ir"):
        assert 0.0 <= train[f"clean_{k}_mean"] <= 1.0 and 0.0 <= train[f"clean_{k}_above_half"] <= 1.0
    assert all(np.isfinite(v) for k, v in train.items() if k.startswith("loss_"))
    check_metric_dict(train["eval"]["all-search"], "mmm epoch 1")
    last = load_pth(s.run_dir / "last.pth")
    assert (last["stage"], last["epoch"], last["dataset"]) == ("mmm", 2, "sysu")
    assert any(float(p.abs().sum()) > 0 for p in last["extra"]["prototypes"].values())  # refreshed
    assert load_pth(s.run_dir / "best.pth")["optimizer"] is None  # weights only; resuming reads last.pth
    with np.load(s.run_dir / "mmlm_labels.npz") as m:  # the matched labels, written for inspection
        assert len(m["paths_rgb"]) == len(m["labels_rgb"]) and len(m["paths_ir"]) == len(m["labels_ir"])
        matched = set(m["labels_rgb"][m["labels_rgb"] >= 0].tolist())
        assert matched and matched <= set(m["labels_ir"].tolist())  # visible labels live in the ir label space


@pytest.mark.parametrize("case, fragments", [
    ("artifact_other_dataset", ["pseudo_labels.npz", "regdb", "--dataset sysu"]),
    ("artifact_other_trial", ["trial 1", "--trial 2"]),
    ("checkpoint_other_dataset", ["final.pth", "regdb", "--dataset sysu"]),
    ("artifact_paths_not_matching", ["rgb images do not match the dataset on disk"]),
])
def test_main_refuses_foreign_stage1_output(e2e, case, fragments):
    """main.py refuses (exit 2, one line): the RegDB artifact for --dataset sysu, the trial-1 artifact
    for --trial 2, the RegDB checkpoint with the right SYSU artifact, and an artifact whose image
    paths do not match the data on disk (one training image removed)."""
    assert_refused(e2e.get(f"main_{case}"), *fragments)


# ----------------------------------------------------------------------------------------------
# test.py


def test_testpy_sysu_on_stage2_checkpoint(e2e):
    """test.py on the stage-2 best.pth: 10 gallery trials, JSON next to the checkpoint, and trial 0
    equal to the evaluation main.py logged for that epoch (same model, gallery and preprocessing)."""
    s: Stage2 = e2e.get("sysu_stage2")
    proc = e2e.get("testpy_sysu")
    assert_ok(proc)
    assert "all-search MEAN" in proc.stdout
    ckpt = s.run_dir / "best.pth"
    rec = json.loads((s.run_dir / "test_sysu_all.json").read_text())
    assert set(rec) == {"dataset", "trial", "checkpoint", "stage", "epoch", "arch", "img_h", "img_w", "mode", "shot",
                        "flip", "gallery_trials", "results"}
    assert (rec["dataset"], rec["trial"], rec["stage"], rec["mode"], rec["shot"], rec["flip"]) == \
        ("sysu", None, "mmm", "all", 1, False)
    assert (rec["arch"], rec["img_h"], rec["img_w"], rec["gallery_trials"]) == ("resnet18", 32, 16, 10)
    assert "warning:" not in proc.stderr  # evaluated at the training size
    assert rec["checkpoint"] == os.path.abspath(ckpt)
    assert list(rec["results"]) == ["all-search"]
    res = rec["results"]["all-search"]
    assert set(res) == {"splits", "mean", "std"}
    assert sorted(res["splits"]) == sorted(f"trial{i}" for i in range(10))
    for name, m in res["splits"].items():
        check_metric_dict(m, name)
    check_metric_dict(res["mean"], "mean")
    for k in METRICS:
        values = [m[k] for m in res["splits"].values()]
        assert res["mean"][k] == pytest.approx(np.mean(values), abs=1e-9)
        assert res["std"][k] == pytest.approx(np.std(values), abs=1e-9)
    best_epoch = load_pth(ckpt)["epoch"]
    assert rec["epoch"] == best_epoch
    logged = {r["epoch"]: r for r in metrics_lines(s.run_dir)}[best_epoch]["eval"]["all-search"]
    for k in METRICS:
        assert res["splits"]["trial0"][k] == pytest.approx(logged[k], abs=1e-6), k


def test_testpy_regdb_both_directions_on_stage1_checkpoint(e2e):
    """test.py on the RegDB stage-1 final.pth with --flip: both directions, JSON at --out, and
    visible->thermal equal to the stage-1 evaluation of the last epoch (the same model)."""
    s: Stage1 = e2e.get("regdb_stage1")
    proc, out = e2e.get("testpy_regdb")
    assert_ok(proc)
    rec = json.loads(out.read_text())
    assert (rec["dataset"], rec["trial"], rec["stage"], rec["flip"]) == ("regdb", 1, "baseline", True)
    assert set(rec["results"]) == {"visible2thermal", "thermal2visible"}
    for name, res in rec["results"].items():
        assert list(res["splits"]) == [name]
        check_metric_dict(res["splits"][name], name)
        assert res["mean"] == res["splits"][name] and all(v == 0 for v in res["std"].values())
    logged = metrics_lines(s.run_dir)[-1]["eval"]["visible2thermal"]
    for k in METRICS:
        assert rec["results"]["visible2thermal"]["mean"][k] == pytest.approx(logged[k], abs=1e-6), k


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["no file", "nope.pth"]),
    ("not_a_checkpoint", ["not a readable checkpoint", "model.pth"]),
    ("other_dataset", ["regdb", "--dataset sysu"]),
    ("other_arch", ["resnet18", "--arch resnet50"]),
])
def test_testpy_refusals(e2e, case, fragments):
    """test.py --dataset sysu refuses (exit 2, one line, no JSON written): a missing file, a file
    that is not a checkpoint, a RegDB checkpoint, a resnet18 checkpoint with --arch resnet50."""
    proc, out = e2e.get(f"testpy_{case}")
    assert_refused(proc, *fragments)
    assert not out.exists()
