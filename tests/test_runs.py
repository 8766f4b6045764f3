"""Reliability, round two (issue 19): flags checked when parsed, one run per folder, a resume resumes the
same run, Ctrl-C stops a run at any moment, the training scripts keep to one --output-dir. In-process
unless the entry point itself is under test."""
import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from data.sample import DataError
from flag_helpers import parser_of as _parser
from e2e_harness import run_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# flags ----------------------------------------------------------------------------------------------


# one run per folder -----------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    import socket

    from utils.runlock import LOCK_NAME, acquire_lock, release_lock

    lock = tmp_path / LOCK_NAME
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")  # the parent of this process: alive
    with pytest.raises(DataError, match="in use by another run") as info:
        acquire_lock(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    lock.write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    path, warning = acquire_lock(str(tmp_path))
    assert warning and "no longer runs" in warning
    assert lock.read_text().split()[0] == str(os.getpid())
    assert acquire_lock(str(tmp_path)) == (path, None)  # this process again: re-entrant
    release_lock(path)
    assert not lock.exists()


@pytest.fixture(scope="module")
def synth(tiny_sysu):
    """Tiny synthetic SYSU-MM01 layout (8 ids, conftest.py)."""
    return tiny_sysu


def _prepare(synth, out, extra=(), stage="mmm"):
    """(the run's flags as a namespace, its context) of prepare_run for stage 1 or 2."""
    from utils.args import parse
    from utils.run import prepare_run
    from utils.settings import stage1_settings, stage2_settings

    if stage == "mmm":
        args = parse(_parser("main"), ["--dataset", "sysu", "--data-dir", str(synth), "--output-dir", str(out),
                                       "--device", "cpu", "--resume-net1", "x.pth", *extra])
        ctx = prepare_run(stage2_settings(args), last_checkpoint="last.pth")
    else:
        args = parse(_parser("baseline"), ["--data-dir", str(synth), "--output-dir", str(out), "--device", "cpu",
                                           *extra], dataset="sysu")
        ctx = prepare_run(stage1_settings(args), last_checkpoint=os.path.join("intra", "last.pth"))
    return argparse.Namespace(**ctx.flags), ctx


def test_run_dir_of_a_live_run_refused_before_writing(tiny_sysu, tmp_path):
    import socket

    run_dir = tmp_path / "sysu" / "mmm"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(f"{os.getppid()} {socket.gethostname()}\n")
    with pytest.raises(DataError, match="in use by another run") as info:
        _prepare(tiny_sysu, tmp_path)
    assert str(run_dir) in str(info.value)
    assert not (run_dir / "args.json").exists() and not (run_dir / "log.txt").exists()


# a resume resumes the same run ------------------------------------------------------------------------

def _fake_checkpoint(path, args, **fields):
    from utils.checkpoint import FORMAT, atomic_torch_save

    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_torch_save(dict(format=FORMAT, version=2, model={}, stage="baseline", phase="intra", epoch=1,
                           dataset=args.dataset, trial=args.trial, args=dict(vars(args)), **fields), str(path))


@pytest.mark.slow  # prepare_run asks git for the code version (a process)
@pytest.mark.parametrize("changed, flag", [(["--img-h", "96", "--img-w", "48"], "--img-h"),
                                           (["--arch", "resnet34"], "--arch"), (["--seed", "7"], "--seed"),
                                           (["--momentum", "0.5"], "--momentum"), (["--use-hard"], "--use-hard")])
def test_stage1_resume_with_other_flags_refused(tiny_sysu, tmp_path, changed, flag):
    first = ["--img-h", "64", "--img-w", "32", "--arch", "resnet18"]
    args, ctx = _prepare(tiny_sysu, tmp_path, first, stage="baseline")
    _fake_checkpoint(os.path.join(ctx.run_dir, "intra", "last.pth"), args)
    before = open(os.path.join(ctx.run_dir, "args.json")).read()
    with pytest.raises(DataError) as info:
        _prepare(tiny_sysu, tmp_path, first + changed + ["--resume"], stage="baseline")
    assert flag in str(info.value) and "last.pth" in str(info.value) and "\n" not in str(info.value)
    assert open(os.path.join(ctx.run_dir, "args.json")).read() == before  # refused before rewriting
    _prepare(tiny_sysu, tmp_path, first + ["--resume", "--workers", "0", "--epochs", "3"], stage="baseline")


@pytest.mark.slow  # prepare_run asks git for the code version (a process)
def test_stage1_resume_of_another_datasets_checkpoint_refused(tiny_sysu, tmp_path):
    args, ctx = _prepare(tiny_sysu, tmp_path, stage="baseline")
    _fake_checkpoint(os.path.join(ctx.run_dir, "intra", "last.pth"), argparse.Namespace(**{
        **vars(args), "dataset": "regdb", "trial": 1}))
    with pytest.raises(DataError, match="regdb"):
        _prepare(tiny_sysu, tmp_path, ["--resume"], stage="baseline")


@pytest.mark.slow  # prepare_run asks git for the code version (a process)
def test_stage2_resume_after_stage1_rerun_refused(tiny_sysu, tmp_path):
    s1 = tmp_path / "s1"
    s1.mkdir()
    (s1 / "final.pth").write_bytes(b"stage-1 weights")
    (s1 / "pseudo_labels.npz").write_bytes(b"stage-1 labels")
    net1 = ["--resume-net1", str(s1 / "final.pth")]
    from utils.args import parse
    from utils.run import prepare_run
    from utils.settings import stage2_settings

    def prepare(*extra):
        args = parse(_parser("main"), ["--dataset", "sysu", "--data-dir", str(tiny_sysu), "--output-dir",
                                       str(tmp_path / "out"), "--device", "cpu", *net1, *extra])
        ctx = prepare_run(stage2_settings(args), last_checkpoint="last.pth")
        return argparse.Namespace(**ctx.flags), ctx

    args, ctx = prepare()
    assert set(args.stage1_inputs) == {"checkpoint", "artifact"} and all(args.stage1_inputs.values())
    _fake_checkpoint(os.path.join(ctx.run_dir, "last.pth"), args, prototypes={})
    (tmp_path / "out" / "sysu" / "mmm" / "mmlm_labels.npz").write_bytes(b"matched")
    prepare("--resume")  # same stage 1: resumes
    (s1 / "pseudo_labels.npz").write_bytes(b"stage-1 labels of another run")
    with pytest.raises(DataError, match="stage-1 output changed"):
        prepare("--resume")
    assert (tmp_path / "out" / "sysu" / "mmm" / "mmlm_labels.npz").read_bytes() == b"matched"


# Ctrl-C -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_interrupt_dropped_by_python_still_stops_the_run():
    """A Ctrl-C whose KeyboardInterrupt lands in a __del__ (Python prints and drops it) still ends the
    run, with exit status 130, within the grace time; without the handler this loops for ever."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {ROOT!r})
        from utils.cli import run_cli

        class Dropped:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the interrupt is raised in here, where Python drops it
                    pass

        def main(argv):
            Dropped()
            while True:
                time.sleep(0.01)

        sys.exit(run_cli(main, grace_s=1.0))
    """)
    proc = run_cmd([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" in proc.stderr


def test_run_cli_reports_interrupt_and_restores_the_handler(capsys):
    from utils.cli import run_cli

    before = signal.getsignal(signal.SIGINT)

    def main(argv):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10 ** 6):
            pass
        raise AssertionError("not interrupted")

    assert run_cli(main) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


# the training scripts keep to one --output-dir ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("script, stage1, stage2", [
    ("train_sysu.sh", "OUT/sysu/baseline/final.pth", "OUT/sysu/mmm/best.pth"),
    ("train_llcm.sh", "OUT/llcm/baseline/final.pth", "OUT/llcm/mmm/best.pth"),
    ("train_regdb.sh", "OUT/regdb_trial10/baseline/final.pth", "OUT/regdb_trial{trial}/mmm/best.pth")])
@pytest.mark.parametrize("spelling", [["--output-dir", "OUT"], ["--output_dir=OUT"]])
def test_train_scripts_read_stage1_from_the_output_dir(tmp_path, script, stage1, stage2, spelling):
    """A stand-in ``python`` records each command: stage 2 and test.py read what stage 1 wrote into OUT."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {tmp_path / 'calls.txt'}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    assert run_cmd(["bash", os.path.join(ROOT, "scripts", script), "DATA", *spelling, "--epochs", "1"],
                   env=env, timeout=60).returncode == 0
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    mains = [c for c in calls if c.startswith("main.py")]
    tests = [c for c in calls if c.startswith("test.py")]
    assert mains and tests and "logs/" not in json.dumps(calls)
    assert f"--resume_net1 {stage1}" in mains[-1]
    assert all(f"--resume-net1 {stage2}" in t for t in tests)


@pytest.mark.slow  # prepare_run asks git for the code version (a process)
def test_orphan_temp_files_removed_at_start(synth, tmp_path):
    run_dir = tmp_path / "sysu" / "mmm"
    (run_dir / "sub").mkdir(parents=True)
    old = [run_dir / ".tmp_a1b2.pth", run_dir / "sub" / ".tmp_c3.pth"]
    keep = [run_dir / ".tmp_new.pth", run_dir / "other.pth"]
    for p in old + keep:
        p.write_bytes(b"x" * 10)
    past = time.time() - 3600
    for p in old + [keep[1]]:
        os.utime(p, (past, past))
    _prepare(synth, tmp_path)
    assert not any(p.exists() for p in old) and all(p.exists() for p in keep)
    log = (run_dir / "log.txt").read_text()
    assert all(str(p) in log for p in old) and ".tmp_new.pth" not in log


@pytest.mark.slow  # prepare_run asks git for the code version (a process)
def test_args_json_rewritten_each_start_with_absolute_paths(synth, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c").mkdir()
    rel_data = os.path.relpath(synth, tmp_path)
    _prepare(rel_data, "out", ["--batch-ids", "4"])
    _prepare(rel_data, "out", ["--batch-ids", "2", "--cache-dir", "c"])
    rec = json.loads((tmp_path / "out" / "sysu" / "mmm" / "args.json").read_text())
    assert rec["batch_ids"] == 2
    for key in ("data_dir", "output_dir", "resume_net1", "cache_dir"):
        assert os.path.isabs(rec[key]), key
    assert rec["data_dir"] == str(synth)
    head = run_cmd(["git", "rev-parse", "HEAD"])
    assert rec["code_version"] == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_code_version_without_git(monkeypatch):
    from utils import run

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(run.subprocess, "run", no_git)
    assert run.code_version() == "unknown"


def test_checkpoint_file_mode_follows_umask(tmp_path):
    from utils.checkpoint import atomic_torch_save

    old = os.umask(0o022)
    try:
        atomic_torch_save({"x": 1}, str(tmp_path / "a.pth"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600


def test_version1_checkpoint_epoch_read_as_completed_epochs(tmp_path):
    """Version 1 stored the 0-based index of the last epoch: resuming it must not repeat nor skip one."""
    import torch
    from utils.checkpoint import FORMAT, load_checkpoint

    torch.save({"format": FORMAT, "version": 1, "model": {}, "epoch": 0}, tmp_path / "old.pth")
    torch.save({"format": FORMAT, "version": 2, "model": {}, "epoch": 1}, tmp_path / "new.pth")
    assert load_checkpoint(str(tmp_path / "old.pth"))["epoch"] == 1
    assert load_checkpoint(str(tmp_path / "new.pth"))["epoch"] == 1


@pytest.mark.slow  # prepare_run asks git for the code version (a process)
def test_log_marks_every_start_of_a_run(synth, tmp_path):
    """A failed attempt and its corrected rerun share log.txt: each start is marked with its time and command."""
    _prepare(synth, tmp_path, ["--batch-ids", "4"])
    _prepare(synth, tmp_path, ["--batch-ids", "2"])
    starts = [line for line in (tmp_path / "sysu" / "mmm" / "log.txt").read_text().splitlines()
              if "==== start " in line]
    assert len(starts) == 2 and all("(code " in line for line in starts)
