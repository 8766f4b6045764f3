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

import pytest

from data.sample import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS = {"main": ["--dataset", "sysu", "--data-dir", "D", "--resume-net1", "x.pth"],
         "test": ["--dataset", "regdb", "--trial", "1", "--data-dir", "D", "--resume-net1", "x.pth"],
         "baseline": ["--data-dir", "D"]}


def _parser(kind: str):
    from utils.args import baseline_parser, mmm_parser, test_parser

    return {"baseline": lambda: baseline_parser("sysu"), "main": mmm_parser, "test": test_parser}[kind]()


def _refused(kind: str, extra, capsys) -> str:
    """utils.args.parse of NEEDS[kind] + extra must end in one usage error (exit 2); returns its line."""
    from utils.args import parse

    with pytest.raises(SystemExit) as info:
        parse(_parser(kind), NEEDS[kind] + list(extra), dataset="sysu" if kind == "baseline" else None)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


# flags ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, flag, value", [
    ("baseline", "--seed", "-1"), ("baseline", "--momentum", "2"), ("main", "--batch-ids", "1"),
    ("test", "--visualize", "-1"), ("baseline", "--lr", "1e6"), ("main", "--lr", "nan"),
    ("baseline", "--img-h", "100000"), ("main", "--img-w", "4"), ("baseline", "--eps", "1.5"),
    ("baseline", "--temp", "0"), ("baseline", "--weight-decay", "-1"), ("main", "--margin", "-0.1"),
    ("main", "--intra-weight", "inf"), ("main", "--inter-weight", "-1"), ("test", "--rerank-lambda", "nan"),
    ("main", "--seed", str(2 ** 32))])
def test_numbers_out_of_range_refused_when_parsed(kind, flag, value, capsys):
    line = _refused(kind, [flag, value], capsys)
    assert flag in line and value in line


def test_every_numeric_flag_has_a_checked_type():
    """No number is parsed by plain int/float: each numeric flag states its range in its type."""
    loose = [(kind, a.option_strings[0]) for kind in NEEDS for a in _parser(kind)._actions
             if a.type in (int, float) and not a.choices]
    assert loose == []


def test_tvsearch_contradicting_direction_refused(capsys):
    line = _refused("test", ["--tvsearch", "--direction", "visible2thermal"], capsys)
    assert "--tvsearch" in line and "--direction visible2thermal" in line
    from utils.args import parse

    args = parse(_parser("test"), NEEDS["test"] + ["--tvsearch", "--direction", "thermal2visible"])
    assert args.tvsearch


def test_knn_faiss_checked_at_start_with_the_import_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # "import faiss" raises ImportError
    line = _refused("baseline", ["--knn", "faiss"], capsys)
    assert "--knn faiss" in line and "import of faiss halted" in line and "--knn torch" in line  # the real error


def test_offline_weights_for_a_resnet_refused_when_parsed(capsys):
    """The package ships a MobileNetV2 only: --pretrained imagenet-offline with a ResNet is a usage error."""
    from utils.args import parse

    for stage in ("baseline", "main"):
        line = _refused(stage, ["--arch", "resnet18", "--pretrained", "imagenet-offline"], capsys)
        assert "imagenet-offline" in line and "--arch resnet18" in line
        args = parse(_parser(stage), NEEDS[stage] + ["--arch", "mobilenet_v2", "--pretrained", "imagenet-offline"],
                     dataset="sysu" if stage == "baseline" else None)
        assert (args.arch, args.pretrained) == ("mobilenet_v2", "imagenet-offline")


# one run per folder -----------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


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


def test_stage1_resume_of_another_datasets_checkpoint_refused(tiny_sysu, tmp_path):
    args, ctx = _prepare(tiny_sysu, tmp_path, stage="baseline")
    _fake_checkpoint(os.path.join(ctx.run_dir, "intra", "last.pth"), argparse.Namespace(**{
        **vars(args), "dataset": "regdb", "trial": 1}))
    with pytest.raises(DataError, match="regdb"):
        _prepare(tiny_sysu, tmp_path, ["--resume"], stage="baseline")


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
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
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
    subprocess.run(["bash", os.path.join(ROOT, "scripts", script), "DATA", *spelling, "--epochs", "1"],
                   env=env, check=True, timeout=60)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    mains = [c for c in calls if c.startswith("main.py")]
    tests = [c for c in calls if c.startswith("test.py")]
    assert mains and tests and "logs/" not in json.dumps(calls)
    assert f"--resume_net1 {stage1}" in mains[-1]
    assert all(f"--resume-net1 {stage2}" in t for t in tests)
