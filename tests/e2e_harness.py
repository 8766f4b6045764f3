"""The one subprocess runner and the one set of tiny flags of the test suite, with the helpers of the
end-to-end tests: interruption of a run at a checkpoint, an in-process runner for entry points, the
assertions shared by the tests, and the records the jobs of tests/e2e_jobs.py hand to the tests.

Every test that runs an entry point or a script goes through :func:`run` (``python <script>``) or
:func:`run_cmd` (any command), or, where the process itself is not under test, :func:`run_main` (the
entry's ``main(argv)`` through ``utils.cli.run_cli`` in this process, same exit code and output).

Kills (SIGKILL) wait for a checkpoint *and* its metrics line before sending the signal, so the kill never
depends on timing (the next write is a whole epoch away); the window between those two writes is tested on
its own, deterministically (``test_resume_after_kill_between_checkpoint_and_metrics`` in
tests/test_e2e_stage1.py). Ctrl-C (SIGINT) is sent from inside the run at a chosen training event
(:func:`run_interrupted_at`), so where it lands never depends on timing either.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

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


def flags(base: Sequence[str], drop: Sequence[str] = (), **values) -> List[str]:
    """``base`` with ``--<name>`` set to each of ``values`` (``batch_size=8`` sets ``--batch-size 8``;
    replaced where present, appended where not) and the flags in ``drop`` (with their value, if any)
    removed. E.g. ``flags(STAGE1, epochs=1, eval_step=0, drop=["--report-ari"])``."""
    out: List[str] = []
    names = {"--" + k.replace("_", "-"): str(v) for k, v in values.items()}
    i = 0
    while i < len(base):
        arg = str(base[i])
        takes_value = i + 1 < len(base) and not str(base[i + 1]).startswith("--")
        if arg in drop or arg in names:
            i += 2 if takes_value else 1
            continue
        out.append(arg)
        i += 1
    for name, value in names.items():
        out += [name, value]
    return out


RANKS = ("r1", "r5", "r10", "r20")
METRICS = set(RANKS) | {"mAP", "mINP"}
TIMEOUT = 900  # seconds per subprocess; generous for a loaded machine, only there to stop a hang
# One intra-op thread per subprocess (as conftest.py does in-process): at these tensor sizes a second
# thread gains little, two jobs run side by side, and OpenMP threads competing for cores slow a run
# down several times.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------------------
# subprocesses


_LIVE: Set[subprocess.Popen] = set()   # running subprocesses, killed if the session is interrupted
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()           # set on Ctrl-C: no new subprocess starts


def _start(cmd: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
           **kwargs) -> subprocess.Popen:
    with _LIVE_LOCK:
        if _STOPPING.is_set():
            raise RuntimeError("test session interrupted")
        proc = subprocess.Popen(cmd, cwd=cwd or ROOT, env=env or ENV, text=True, **kwargs)
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


def run_cmd(cmd: Sequence, timeout: float = TIMEOUT, env: Optional[Dict[str, str]] = None,
            cwd: Optional[Path] = None, **popen) -> subprocess.CompletedProcess:
    """Run ``cmd`` (from the repository root unless ``cwd``); stdout and stderr captured as text; stdin
    closed. ``env`` replaces the environment (default :data:`ENV`); ``popen``: more ``Popen`` arguments
    (``preexec_fn``). A run still going after ``timeout`` seconds is killed and fails the test."""
    cmd = [str(a) for a in cmd]
    proc = _start(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                  **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{cmd} did not finish within {timeout}s:\n{out[-2000:]}\n{err[-2000:]}") from None
    finally:
        _forget(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run(script: str, *args, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repository root (:func:`run_cmd`; ``script`` relative to it)."""
    return run_cmd([sys.executable, script, *args], timeout=timeout, **kwargs)


def run_main(main, argv: Sequence, capsys) -> subprocess.CompletedProcess:
    """An entry point's ``main(argv)`` run in this process as its script runs it (``utils.cli.run_cli``:
    one-line errors, exit status), with what it printed (pytest's ``capsys``), as a CompletedProcess:
    what :func:`assert_ok` and :func:`assert_refused` check. A usage error (argparse) gives exit 2 and
    argparse's lines, as from the real script; a bug raises, as the script would print a traceback."""
    from utils.cli import run_cli

    argv = [str(a) for a in argv]
    capsys.readouterr()
    try:
        code = run_cli(main, argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(["<main>", *argv], code, printed.out, printed.err)


def entry_main(script: str):
    """``main(argv)`` of an entry script: ``baseline_<dataset>.py``, ``main.py``, ``test.py``, or a
    script of scripts/ (``scripts/inspect_dataset.py``)."""
    import importlib

    name = script[:-3] if script.endswith(".py") else script
    if name.startswith("baseline_"):
        from utils.cli import stage1_main

        dataset = name[len("baseline_"):]
        return lambda argv: stage1_main(dataset, argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name.replace("/", ".")).main


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


def run_interrupted_at(script: str, args: Sequence, stage: str, epoch: int, workdir: Path, log: Path,
                       event: str = "epoch_end", timeout: float = TIMEOUT) -> Interrupted:
    """Run ``script`` (a training entry point) through tests/observed_run.py with an observer that sends
    the process SIGINT from inside at ``event`` of ``stage``'s 1-based ``epoch`` (``epoch_end`` comes
    before that epoch's checkpoint): the interruption lands at the same point of the run whatever the
    machine's speed. ``signalled``: whether the event came."""
    spec, marker = workdir / "interrupt.json", workdir / "interrupt_sent"
    workdir.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"interrupt": {"event": event, "stage": stage, "epoch": epoch, "marker": str(marker)}}))
    cmd = [sys.executable, str(ROOT / "tests" / "observed_run.py"), str(spec), script, *[str(a) for a in args]]
    with open(log, "w") as out:
        proc = _start(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            _forget(proc)
    return Interrupted(marker.exists(), proc.returncode, log.read_text())


# ----------------------------------------------------------------------------------------------
# assertions and readers


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


ERROR_LINE = re.compile(r"(^|: )error: ")


def assert_one_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback (nor a DataLoader worker's), exactly one error line on stderr (``error: ...``
    or argparse's ``prog: error: ...``), containing every fragment; returns the line."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "Caught " not in out, out[-3000:]
    lines = [line for line in proc.stderr.splitlines() if ERROR_LINE.search(line)]
    assert len(lines) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def metrics_lines(run_dir: Path) -> List[Dict]:
    """The records of ``<run_dir>/metrics.jsonl`` (complete lines only)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def phase_epochs(records: Iterable[Dict]) -> List[tuple]:
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


def run_state(run_dir: Path) -> Dict:
    """Which stage-1 files exist and which epochs are logged (taken right after a kill)."""
    return {"final": (run_dir / "final.pth").exists(), "artifact": (run_dir / "pseudo_labels.npz").exists(),
            "intra_last": (run_dir / "intra" / "last.pth").exists(),
            "joint_last": (run_dir / "joint" / "last.pth").exists(),
            "records": phase_epochs(metrics_lines(run_dir))}


# ----------------------------------------------------------------------------------------------
# what the jobs hand to the tests


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


@dataclass
class Chain:
    """Entry points run one after the other on generated data (each only if the one before succeeded)."""

    data: Path
    out: Path                               # --output-dir
    runs: List[subprocess.CompletedProcess]
