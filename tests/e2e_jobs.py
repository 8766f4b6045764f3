"""The end-to-end jobs and the session fixtures that hand them to tests/test_e2e_*.py (exposed through
tests/conftest.py).

Every job generates data or runs entry points as subprocesses on the CPU and returns what the tests check
(the records of tests/e2e_harness.py); tests/e2e_scheduler.py runs them lazily, two at a time, each at
most once per session. A test names the jobs it reads with ``@needs(...)`` (the ``e2e_jobs`` marker):
when the session starts (tests/conftest.py asks for the :func:`e2e` fixture before the first test), the
jobs of all selected tests (and what they depend on) are scheduled, so they run in the background while
the other tests run (the tests that read jobs go last), independent jobs overlap, and jobs no selected
test needs never run.

Job names: synth, sysu_stage1, sysu_stage2, testpy_sysu, regdb_stage1, regdb_window, testpy_regdb,
llcm_chain, bench_quick, bench_train_small, and the torchrun jobs ddp_* (tests/e2e_ddp.py). The refusals
of test.py, main.py and baseline_sysu.py on the runs' outputs (:func:`refused_testpy`, :func:`main_refusal`,
:func:`rerun_without_resume`) run in-process in their tests.
The SYSU chain (stage 1 -> stage 2 -> test.py) is the longest, so it goes first whenever it is ready.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from e2e_harness import (STAGE1, STAGE2, TINY, Chain, Stage1, Stage2, Synth, Window, assert_ok, entry_main, flags,
                         metrics_lines, phase_epochs, run, run_and_interrupt, run_cmd, run_interrupted_at, run_main,
                         run_state)
from e2e_ddp import DDP_JOBS
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


def rerun_without_resume(e2e: Jobs, capsys):
    """baseline_sysu.py again (in-process) into the finished SYSU run directory, without --resume: (process,
    files before, files after)."""
    s1: Stage1 = e2e.get("sysu_stage1")
    assert_ok(s1.resumed)
    names = ("metrics.jsonl", "log.txt", "args.json")
    before = {n: (s1.run_dir / n).read_bytes() for n in names}
    proc = run_main(entry_main("baseline_sysu.py"), s1.args, capsys)
    return proc, before, {n: (s1.run_dir / n).read_bytes() for n in names}


def _testpy_regdb(jobs: Jobs, out: Path):
    """test.py --flip on the RegDB stage-1 final.pth, JSON written to --out."""
    synth: Synth = jobs.result("synth")
    s1: Stage1 = jobs.result("regdb_stage1")
    assert_ok(s1.resumed)
    return run("test.py", "--dataset", "regdb", "--trial", "1", "--data-dir", synth.regdb, "--flip",
               "--resume-net1", s1.run_dir / "final.pth", "--out", out / "regdb.json", *TINY), out / "regdb.json"


def refused_testpy(e2e: Jobs, case: str, out: Path, capsys):
    """test.py --dataset sysu, in-process (tests/e2e_harness.py ``run_main``), on a checkpoint it must
    refuse (TESTPY_REFUSALS); returns (process, --out path). Reads the jobs of TESTPY_REFUSAL_NEEDS[case]."""
    synth: Synth = e2e.get("synth")
    if case == "missing":
        ckpt, extra = out / "nope.pth", []
    elif case == "not_a_checkpoint":
        ckpt, extra = out / "model.pth", []
        ckpt.write_bytes(b"\x00 definitely not a torch checkpoint \x00" * 10)
    elif case == "other_dataset":
        ckpt, extra = e2e.get("regdb_stage1").run_dir / "final.pth", []
    else:  # other_arch
        ckpt, extra = e2e.get("sysu_stage1").run_dir / "final.pth", ["--arch", "resnet50"]
    if case in ("other_dataset", "other_arch"):
        assert ckpt.is_file()
    tiny = flags(TINY, drop=["--arch"])  # the architecture comes from the checkpoint
    return run_main(entry_main("test.py"), ["--dataset", "sysu", "--data-dir", synth.sysu, "--resume-net1", ckpt,
                                            "--out", out / "result.json", *tiny, *extra], capsys), out / "result.json"


def main_refusal(e2e: Jobs, case: str, out: Path, capsys):
    """main.py, in-process, on a stage-1 checkpoint/artifact it must refuse (MAIN_REFUSALS). Reads the jobs
    of MAIN_REFUSAL_NEEDS[case]."""
    synth: Synth = e2e.get("synth")
    extra: List = []
    if case == "artifact_other_dataset":    # SYSU run on the SYSU checkpoint with the RegDB artifact
        s1, r1 = e2e.get("sysu_stage1"), e2e.get("regdb_stage1")
        dataset, root, trial, ckpt = "sysu", synth.sysu, None, s1.run_dir / "final.pth"
        extra = ["--baseline-artifact", r1.run_dir / "pseudo_labels.npz"]
    elif case == "artifact_other_trial":    # RegDB trial 2 on the trial-1 run
        r1 = e2e.get("regdb_stage1")
        dataset, root, trial, ckpt = "regdb", synth.regdb, 2, r1.run_dir / "final.pth"
    elif case == "checkpoint_other_dataset":  # the right SYSU artifact, the RegDB network
        s1, r1 = e2e.get("sysu_stage1"), e2e.get("regdb_stage1")
        dataset, root, trial, ckpt = "sysu", synth.sysu, None, r1.run_dir / "final.pth"
        extra = ["--baseline-artifact", s1.run_dir / "pseudo_labels.npz", "--matching", "hungarian",
                 "--batch-ids", "2"]  # as STAGE2: the check under test comes after the matching
    else:  # artifact_paths_not_matching: the same SYSU data with one visible training image fewer
        s1 = e2e.get("sysu_stage1")
        dataset, root, trial, ckpt = "sysu", out / "sysu_copy", None, s1.run_dir / "final.pth"
        shutil.copytree(synth.sysu, root)
        with np.load(s1.run_dir / "pseudo_labels.npz") as art:
            (root / str(art["paths_rgb"][0])).unlink()
    args = ["--dataset", dataset, "--data-dir", root, "--output-dir", out / "logs", "--resume-net1", ckpt,
            *TINY, "--epochs", "1", *extra]
    if trial is not None:
        args += ["--trial", trial]
    return run_main(entry_main("main.py"), args, capsys)


def _llcm_chain(jobs: Jobs, out: Path) -> Chain:
    """baseline_llcm.py -> main.py -> test.py --rerank --visualize 2 on generated LLCM data (24 ids, 64x32);
    each run only if the one before it succeeded."""
    from data.synthetic_llcm import generate_llcm

    data, logs = out / "LLCM", out / "logs"
    generate_llcm(str(data), ids=24, seed=0, height=64, width=32, images_per_cam=(2, 3))
    runs = [run("baseline_llcm.py", "--data-dir", data, "--output-dir", logs, *STAGE1)]
    if runs[-1].returncode == 0:
        runs.append(run("main.py", "--dataset", "llcm", "--data-dir", data, "--output-dir", logs,
                        "--resume_net1", logs / "llcm" / "baseline" / "final.pth", *STAGE2))
    if runs[-1].returncode == 0 and len(runs) == 2:
        runs.append(run("test.py", "--dataset", "llcm", "--data-dir", data, "--resume-net1",
                        logs / "llcm" / "mmm" / "best.pth", "--rerank", "--visualize", "2", *TINY))
    return Chain(data, logs, runs)


def infrared_shows_visible(root) -> None:
    """Overwrite every infrared image (SYSU-MM01 cameras 3 and 6) with one of the same person's visible images."""
    for cam in ("cam3", "cam6"):
        for person in sorted((root / cam).iterdir()):
            visible = sorted(f for c in (1, 2, 4, 5) for f in (root / f"cam{c}" / person.name).glob("*.jpg"))
            for i, image in enumerate(sorted(person.glob("*.jpg")) if visible else ()):
                shutil.copyfile(visible[i % len(visible)], image)


def _bench_quick(jobs: Jobs, out: Path):
    """scripts/bench_learning.py --quick (its five entry-point runs) on generated SYSU-MM01 data whose infrared
    cameras show the visible images (:func:`infrared_shows_visible`); returns (make_synthetic run, bench run,
    bench --out)."""
    data, bench = out / "data", out / "bench"
    make = run("scripts/make_synthetic.py", "--layout", "sysu", "--out", str(data), "--ids",
               "20", "--seed", "4", "--images-per-cam", "4", "6", timeout=300)
    if make.returncode != 0:
        return make, make, bench
    infrared_shows_visible(data)
    # --threads 1: on a shared 2-core machine two OpenMP threads per stage can run several times slower
    # 64x32 keeps the five processes quick; the default size's command lines: test_stage_command_lines_parse
    proc = run("scripts/bench_learning.py", "--data-dir", str(data), "--out", str(bench), "--quick",
               "--img-h", "64", "--img-w", "32", "--threads", "1", timeout=900)
    return make, proc, bench


# scripts/bench_train.py's main(argv) in a process of its own, its returned dict saved as JSON (argv: the script,
# where to save the dict, the script's flags).
_CALL_MAIN = ("import json, runpy, sys; "
              "json.dump(runpy.run_path(sys.argv[1])['main'](sys.argv[3:]), open(sys.argv[2], 'w'))")


def _bench_train_small(jobs: Jobs, out: Path):
    """scripts/bench_train.py on the CPU at its small size with 4 DataLoader workers: (process, --out JSON,
    JSON of the dict main() returned)."""
    saved, returned = out / "b.json", out / "returned.json"
    proc = run_cmd([sys.executable, "-c", _CALL_MAIN, "scripts/bench_train.py", returned,
                    "--device", "cpu", "--amp-modes", "off", "--loader-images", "6", "--workdir", out / "work",
                    "--out", saved, "--workers", "4"])
    return proc, saved, returned


# The jobs each refusal reads.
TESTPY_REFUSAL_NEEDS = {"missing": ("synth",), "not_a_checkpoint": ("synth",),
                        "other_dataset": ("synth", "regdb_stage1"), "other_arch": ("synth", "sysu_stage1")}
MAIN_REFUSAL_NEEDS = {"artifact_other_dataset": ("synth", "sysu_stage1", "regdb_stage1"),
                      "artifact_other_trial": ("synth", "regdb_stage1"),
                      "checkpoint_other_dataset": ("synth", "sysu_stage1", "regdb_stage1"),
                      "artifact_paths_not_matching": ("synth", "sysu_stage1")}
# Priority 0: the SYSU chain, the longest; 1: the RegDB stage 1, which most short runs wait for; 2: the rest.
JOBS: Dict[str, JobSpec] = {
    "synth": JobSpec(_synth, (), 0),
    "sysu_stage1": JobSpec(_sysu_stage1, ("synth",), 0),
    "sysu_stage2": JobSpec(_sysu_stage2, ("synth", "sysu_stage1"), 0),
    "testpy_sysu": JobSpec(_testpy_sysu, ("synth", "sysu_stage2"), 0),
    "regdb_stage1": JobSpec(_regdb_stage1, ("synth",), 1),
    "regdb_window": JobSpec(_regdb_window, ("regdb_stage1",)),
    "testpy_regdb": JobSpec(_testpy_regdb, ("synth", "regdb_stage1")),
    "llcm_chain": JobSpec(_llcm_chain, (), 1),
    "bench_quick": JobSpec(_bench_quick, (), 0),
    "bench_train_small": JobSpec(_bench_train_small, (), 1),
    **DDP_JOBS,
}


SESSION_JOBS: List[Jobs] = []  # the session's jobs, for the summary line at the end (tests/conftest.py)


@pytest.fixture(scope="session")
def e2e(request, tmp_path_factory):
    """The session's jobs (:class:`e2e_scheduler.Jobs`); ``e2e.get(name)`` returns a job's result.

    On first use, schedules the jobs that the selected tests name with ``@needs``; at the end of the
    session, kills whatever still runs (a test stopped early); tests/conftest.py prints the job times.
    """
    jobs = Jobs(JOBS, tmp_path_factory.mktemp("e2e"))
    jobs.request(*[name for item in request.session.items for mark in item.iter_markers("e2e_jobs")
                   for name in mark.args])
    SESSION_JOBS.append(jobs)
    yield jobs
    jobs.stop()

