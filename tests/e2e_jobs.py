"""The end-to-end jobs and the session fixtures that hand them to tests/test_e2e_*.py (exposed through
tests/conftest.py).

Every job generates data or runs entry points as subprocesses on the CPU and returns what the tests check
(the records of tests/e2e_harness.py); tests/e2e_scheduler.py runs them lazily, two at a time, each at
most once per session. A test names the jobs it reads with ``@needs(...)`` (the ``e2e_jobs`` marker):
when the first test asks for the :func:`e2e` fixture, the jobs of all selected tests (and what they
depend on) are scheduled, so independent jobs overlap, and jobs no selected test needs never run.

Job names: synth, sysu_stage1, sysu_stage2, testpy_sysu, regdb_stage1, regdb_window,
rerun_without_resume, testpy_regdb, testpy_<case> (TESTPY_REFUSALS), main_<case> (MAIN_REFUSALS).
The SYSU chain (stage 1 -> stage 2 -> test.py) is the longest, so it goes first whenever it is ready.
"""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from e2e_harness import (STAGE1, STAGE2, TINY, Stage1, Stage2, Synth, Window, assert_ok, metrics_lines,
                         phase_epochs, run, run_and_interrupt, run_interrupted_at, run_state)
from e2e_scheduler import Jobs, JobSpec

TESTPY_REFUSALS = ("missing", "not_a_checkpoint", "other_dataset", "other_arch")
MAIN_REFUSALS = ("artifact_other_dataset", "artifact_other_trial", "checkpoint_other_dataset",
                 "artifact_paths_not_matching")
needs = pytest.mark.e2e_jobs  # @needs("sysu_stage1", ...): the jobs a test reads through the e2e fixture


def _synth(jobs: Jobs, out: Path) -> Synth:
    """SYSU-MM01 layout with 24 ids (22 train+val, 6 test) and RegDB layout with 16 persons, 64x32."""
    from data.synthetic import generate_regdb, generate_sysu

    generate_sysu(str(out / "sysu"), ids=24, seed=0, height=64, width=32)
    generate_regdb(str(out / "regdb"), ids=16, seed=0, height=64, width=32)
    return Synth(sysu=out / "sysu", regdb=out / "regdb")


def _sysu_stage1(jobs: Jobs, out: Path) -> Stage1:
    """baseline_sysu.py killed (SIGKILL) after intra epoch 0, then continued with --resume."""
    synth: Synth = jobs.result("synth")
    run_dir = out / "sysu" / "baseline"
    args = [str(a) for a in ["--data-dir", synth.sysu, "--output-dir", out, *STAGE1]]
    first = run_and_interrupt("baseline_sysu.py", args, run_dir / "intra" / "last.pth", run_dir, records=1,
                              sig=signal.SIGKILL, log=out / "first_run.txt")
    after = run_state(run_dir)
    return Stage1(out, run_dir, args, first, after, run("baseline_sysu.py", *args, "--resume"))


def _regdb_stage1(jobs: Jobs, out: Path) -> Stage1:
    """baseline_regdb.py --trial 1 killed (SIGKILL) after joint epoch 0, then continued with --resume.

    The run directory as killed is copied into the folder of the ``regdb_window`` job first.
    """
    synth: Synth = jobs.result("synth")
    run_dir = out / "regdb_trial1" / "baseline"
    args = [str(a) for a in ["--trial", "1", "--data-dir", synth.regdb, "--output-dir", out, *STAGE1]]
    first = run_and_interrupt("baseline_regdb.py", args, run_dir / "joint" / "last.pth", run_dir, records=3,
                              sig=signal.SIGKILL, log=out / "first_run.txt")
    after = run_state(run_dir)
    shutil.copytree(run_dir, jobs.workdir("regdb_window") / "regdb_trial1" / "baseline")
    return Stage1(out, run_dir, args, first, after, run("baseline_regdb.py", *args, "--resume"))


def _regdb_window(jobs: Jobs, out: Path) -> Window:
    """The copy of the killed RegDB run minus its last metrics line (what a kill between the checkpoint
    write and the metrics append leaves), resumed."""
    s1: Stage1 = jobs.result("regdb_stage1")
    copy = out / "regdb_trial1" / "baseline"
    lines = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
    before = phase_epochs(json.loads(x) for x in lines)
    (copy / "metrics.jsonl").write_text("".join(lines[:-1]))  # last epoch checkpointed, not logged
    moved = [a if a != str(s1.out) else str(out) for a in s1.args]
    return Window(copy, before, run("baseline_regdb.py", *moved, "--resume"))


def _sysu_stage2(jobs: Jobs, out: Path) -> Stage2:
    """main.py from the SYSU final.pth, interrupted with SIGINT in epoch 2 (after its training, before
    its checkpoint: epoch 1 is the last complete one), then resumed."""
    synth: Synth = jobs.result("synth")
    s1: Stage1 = jobs.result("sysu_stage1")
    assert_ok(s1.resumed)
    run_dir = out / "sysu" / "mmm"
    args = ["--dataset", "sysu", "--data-dir", synth.sysu, "--output-dir", out,
            "--resume_net1", s1.run_dir / "final.pth", "--report-ari", *STAGE2]
    first = run_interrupted_at("main.py", args, "stage2", 2, out, log=out / "first_run.txt")
    after = {"records": [r["epoch"] for r in metrics_lines(run_dir)]}
    return Stage2(run_dir, first, after, run("main.py", *args, "--resume"))


def _testpy_sysu(jobs: Jobs, out: Path):
    """test.py on the stage-2 best.pth (its JSON goes next to the checkpoint)."""
    synth: Synth = jobs.result("synth")
    s2: Stage2 = jobs.result("sysu_stage2")
    return run("test.py", "--dataset", "sysu", "--data-dir", synth.sysu, "--resume-net1", s2.run_dir / "best.pth",
               *TINY)


def _rerun_without_resume(jobs: Jobs, out: Path):
    """baseline_sysu.py again into the finished run directory, without --resume; files before/after."""
    s1: Stage1 = jobs.result("sysu_stage1")
    assert_ok(s1.resumed)
    names = ("metrics.jsonl", "log.txt", "args.json")
    before = {n: (s1.run_dir / n).read_bytes() for n in names}
    proc = run("baseline_sysu.py", *s1.args)
    return proc, before, {n: (s1.run_dir / n).read_bytes() for n in names}


def _testpy_regdb(jobs: Jobs, out: Path):
    """test.py --flip on the RegDB stage-1 final.pth, JSON written to --out."""
    synth: Synth = jobs.result("synth")
    s1: Stage1 = jobs.result("regdb_stage1")
    assert_ok(s1.resumed)
    return run("test.py", "--dataset", "regdb", "--trial", "1", "--data-dir", synth.regdb, "--flip",
               "--resume-net1", s1.run_dir / "final.pth", "--out", out / "regdb.json", *TINY), out / "regdb.json"


def _testpy_refusal(case: str):
    """Job: test.py --dataset sysu on a checkpoint it must refuse; returns (process, --out path)."""
    def job(jobs: Jobs, out: Path):
        synth: Synth = jobs.result("synth")
        if case == "missing":
            ckpt, extra = out / "nope.pth", []
        elif case == "not_a_checkpoint":
            ckpt, extra = out / "model.pth", []
            ckpt.write_bytes(b"\x00 definitely not a torch checkpoint \x00" * 10)
        elif case == "other_dataset":
            ckpt, extra = jobs.result("regdb_stage1").run_dir / "final.pth", []
        else:  # other_arch
            ckpt, extra = jobs.result("sysu_stage1").run_dir / "final.pth", ["--arch", "resnet50"]
        if case in ("other_dataset", "other_arch"):
            assert ckpt.is_file()
        flags = ["--device", "cpu", "--img-h", "32", "--img-w", "16", "--workers", "0"]
        return run("test.py", "--dataset", "sysu", "--data-dir", synth.sysu, "--resume-net1", ckpt,
                   "--out", out / "result.json", *flags, *extra), out / "result.json"
    return job


def _main_refusal(case: str):
    """Job: main.py on a stage-1 checkpoint/artifact it must refuse."""
    def job(jobs: Jobs, out: Path):
        synth: Synth = jobs.result("synth")
        extra: List = []
        if case == "artifact_other_dataset":    # SYSU run on the SYSU checkpoint with the RegDB artifact
            s1, r1 = jobs.result("sysu_stage1"), jobs.result("regdb_stage1")
            dataset, root, trial, ckpt = "sysu", synth.sysu, None, s1.run_dir / "final.pth"
            extra = ["--baseline-artifact", r1.run_dir / "pseudo_labels.npz"]
        elif case == "artifact_other_trial":    # RegDB trial 2 on the trial-1 run
            r1 = jobs.result("regdb_stage1")
            dataset, root, trial, ckpt = "regdb", synth.regdb, 2, r1.run_dir / "final.pth"
        elif case == "checkpoint_other_dataset":  # the right SYSU artifact, the RegDB network
            s1, r1 = jobs.result("sysu_stage1"), jobs.result("regdb_stage1")
            dataset, root, trial, ckpt = "sysu", synth.sysu, None, r1.run_dir / "final.pth"
            extra = ["--baseline-artifact", s1.run_dir / "pseudo_labels.npz", "--matching", "hungarian",
                     "--batch-ids", "2"]  # as STAGE2: the check under test comes after the matching
        else:  # artifact_paths_not_matching: the same SYSU data with one visible training image fewer
            s1 = jobs.result("sysu_stage1")
            dataset, root, trial, ckpt = "sysu", out / "sysu_copy", None, s1.run_dir / "final.pth"
            shutil.copytree(synth.sysu, root)
            with np.load(s1.run_dir / "pseudo_labels.npz") as art:
                (root / str(art["paths_rgb"][0])).unlink()
        args = ["--dataset", dataset, "--data-dir", root, "--output-dir", out / "logs", "--resume-net1", ckpt,
                *TINY, "--epochs", "1", *extra]
        if trial is not None:
            args += ["--trial", trial]
        return run("main.py", *args)
    return job


_TESTPY_REFUSAL_DEPS = {"missing": (), "not_a_checkpoint": (), "other_dataset": ("regdb_stage1",),
                        "other_arch": ("sysu_stage1",)}
_MAIN_REFUSAL_DEPS = {"artifact_other_dataset": ("sysu_stage1", "regdb_stage1"),
                      "artifact_other_trial": ("regdb_stage1",),
                      "checkpoint_other_dataset": ("sysu_stage1", "regdb_stage1"),
                      "artifact_paths_not_matching": ("sysu_stage1",)}
# Priority 0: the SYSU chain, the longest; 1: the RegDB stage 1, which most short runs wait for; 2: the rest.
JOBS: Dict[str, JobSpec] = {
    "synth": JobSpec(_synth, (), 0),
    "sysu_stage1": JobSpec(_sysu_stage1, ("synth",), 0),
    "sysu_stage2": JobSpec(_sysu_stage2, ("synth", "sysu_stage1"), 0),
    "testpy_sysu": JobSpec(_testpy_sysu, ("synth", "sysu_stage2"), 0),
    "regdb_stage1": JobSpec(_regdb_stage1, ("synth",), 1),
    "regdb_window": JobSpec(_regdb_window, ("regdb_stage1",)),
    "rerun_without_resume": JobSpec(_rerun_without_resume, ("sysu_stage1",)),
    "testpy_regdb": JobSpec(_testpy_regdb, ("synth", "regdb_stage1")),
    **{f"testpy_{c}": JobSpec(_testpy_refusal(c), ("synth", *d)) for c, d in _TESTPY_REFUSAL_DEPS.items()},
    **{f"main_{c}": JobSpec(_main_refusal(c), ("synth", *d)) for c, d in _MAIN_REFUSAL_DEPS.items()},
}


@pytest.fixture(scope="session")
def e2e(request, tmp_path_factory):
    """The session's jobs (:class:`e2e_scheduler.Jobs`); ``e2e.get(name)`` returns a job's result.

    On first use, schedules the jobs that the selected tests name with ``@needs``; at the end of the
    session, kills whatever still runs (a test stopped early) and prints the job times (shown with -s).
    """
    jobs = Jobs(JOBS, tmp_path_factory.mktemp("e2e"))
    jobs.request(*[name for item in request.session.items for mark in item.iter_markers("e2e_jobs")
                   for name in mark.args])
    yield jobs
    jobs.stop()
    print("\n" + jobs.summary())

