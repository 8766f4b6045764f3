"""Reliability of the entry points (issue 12): flags refused at parse time, every stage-2 flag used,
test.py's input size from the checkpoint, orphan temp files removed, ``args.json`` per start."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS = {"main": ["--dataset", "sysu", "--data-dir", "D", "--resume-net1", "x.pth"],
         "test": ["--dataset", "sysu", "--data-dir", "D", "--resume-net1", "x.pth"],
         "baseline": ["--data-dir", "D"]}


def _parser(kind: str):
    """The parser of baseline_sysu.py, main.py or test.py."""
    from utils.args import baseline_parser, mmm_parser

    if kind == "baseline":
        return baseline_parser("sysu")
    if kind == "main":
        return mmm_parser()
    sys.path.insert(0, ROOT)
    import test as testpy
    return testpy.build_parser()


def _refused(kind: str, extra, capsys) -> str:
    """Parse NEEDS[kind] + extra, expect argparse's usage error (exit 2); return the error line."""
    with pytest.raises(SystemExit) as info:
        _parser(kind).parse_args(NEEDS[kind] + list(extra))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if ": error: " in line][0]


@pytest.fixture(scope="module")
def synth(tiny_sysu):
    """Tiny synthetic SYSU-MM01 layout (8 ids, conftest.py)."""
    return tiny_sysu


# 1. prefix matching ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["main", "test"])
def test_released_resume_net_is_refused_not_abbreviated(kind, capsys):
    argv = [a if a != "--resume-net1" else "--resume-net" for a in NEEDS[kind]]
    with pytest.raises(SystemExit) as info:
        _parser(kind).parse_args(argv)
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("kind, abbrev, value", [("baseline", "--num-inst", "4"), ("main", "--num-mem", "4"),
                                                 ("test", "--direc", "both")])
def test_no_prefix_matching_in_any_parser(kind, abbrev, value, capsys):
    line = _refused(kind, [abbrev, value], capsys)
    assert abbrev in line


def test_resume_net_through_main_py(tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "--dataset", "sysu", "--data-dir", str(tmp_path),
                           "--resume-net", "x.pth"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--resume-net1" in proc.stderr


# 2. numeric flags at parse time ---------------------------------------------------------------

BAD = [("baseline", "--eps", "0"), ("baseline", "--eps", "-0.5"), ("baseline", "--eps", "nan"),
       ("baseline", "--k1", "0"), ("baseline", "--k2", "-1"), ("baseline", "--k1-joint", "0"),
       ("baseline", "--k2-joint", "0"), ("baseline", "--iters", "0"), ("baseline", "--epochs", "0"),
       ("baseline", "--batch-size", "0"), ("baseline", "-b", "-4"), ("baseline", "--num-instances", "0"),
       ("baseline", "--test-batch", "0"), ("baseline", "--workers", "-1"), ("baseline", "--img-h", "0"),
       ("baseline", "--img-w", "-16"), ("baseline", "--height", "0"), ("baseline", "--eps", "abc"),
       ("main", "--epochs", "0"), ("main", "--batch-ids", "0"), ("main", "--num-pos", "0"),
       ("main", "--img-h", "0"), ("main", "--workers", "-2"), ("main", "--print-freq", "0"),
       ("test", "--img-w", "0"), ("test", "--test-batch", "-1"), ("test", "--workers", "-1")]


@pytest.mark.parametrize("kind, flag, value", BAD)
def test_bad_numbers_refused_at_parse_time(kind, flag, value, capsys):
    line = _refused(kind, [flag, value], capsys)
    assert flag in line and value in line


def test_eps_zero_through_baseline_script(tmp_path):
    """No model is built: the usage error comes from argparse, one line, exit 2."""
    proc = subprocess.run([sys.executable, "baseline_sysu.py", "--data-dir", str(tmp_path), "--eps", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("argument --eps: must be a number in (0, 1], got 0")


def test_valid_edge_values_still_parse():
    from utils.args import parse

    args = parse(_parser("baseline"), NEEDS["baseline"] + ["--workers", "0", "--eps", "0.01", "--k1", "1"],
                 dataset="sysu")
    assert args.workers == 0 and args.eps == 0.01 and args.k1 == 1


# 3. main.py flags reach stage 2 -------------------------------------------------------------

STAGE2_SOURCES = ("main.py", "utils/cli.py", "utils/train/stage2.py", "utils/train/stage2_steps.py",
                  "utils/train/loop.py", "utils/train/epoch_end.py", "utils/train/network.py", "utils/run.py",
                  "utils/args.py", "utils/arg_checks.py", "utils/distributed.py", "utils/evaluation/protocols.py")


def test_every_main_flag_is_used_or_refused():
    """Walk main.py's parser: each flag's value goes into the typed settings (or is checked, or refused),
    and each field of the stage-2 settings is read by the code that runs stage 2."""
    import argparse
    import dataclasses

    import typed_settings
    from utils.args import _Refused

    src = "".join(open(os.path.join(ROOT, f)).read() for f in STAGE2_SOURCES + ("utils/settings.py",))
    unused = [a.dest for a in _parser("main")._actions
              if not isinstance(a, (argparse._HelpAction, _Refused))
              and not re.search(r"args\.%s\b|getattr\(args, \"%s\"" % (a.dest, a.dest), src)]
    assert unused == []
    code = "".join(open(os.path.join(ROOT, f)).read() for f in STAGE2_SOURCES)
    settings = typed_settings.stage2()
    fields = [(part.name, f.name) for part in dataclasses.fields(settings)
              if dataclasses.is_dataclass(getattr(settings, part.name))
              for f in dataclasses.fields(getattr(settings, part.name))]
    fields += [("", f.name) for f in dataclasses.fields(settings) if not dataclasses.is_dataclass(getattr(settings, f.name))]
    assert [f for f in fields if not re.search(r"\.%s\b" % f[1], code)] == []


def test_eval_flags_reach_per_epoch_evaluation():
    import inspect

    from utils.args import parse
    from utils.settings import stage2_settings
    from utils.train import stage2 as mmm
    from utils.train import epoch_end

    args = parse(_parser("main"), NEEDS["main"] + ["--flip", "--amp", "--shot", "10", "--eval-trials", "3",
                                                   "--mode", "indoor", "--img-h", "32", "--img-w", "16"])
    settings = stage2_settings(args)
    ev = settings.eval
    assert (ev.flip, ev.shot, ev.gallery_trials, ev.modes, settings.run.amp) == (True, 10, 3, ("indoor",), True)
    assert (ev.img_h, ev.img_w, ev.directions) == (32, 16, ("visible2thermal",))
    assert "evaluate_run(state.model, settings.eval, ctx)" in inspect.getsource(mmm.run_stage2)
    assert "amp=ctx.amp" in inspect.getsource(epoch_end.evaluate_run)  # --amp resolved once, for the run
    assert "settings.schedule.print_freq" in inspect.getsource(mmm.train_pass)


def test_gallery_trials_refused_in_main(capsys):
    line = _refused("main", ["--gallery-trials", "10"], capsys)
    assert "--gallery-trials" in line and "--eval-trials" in line


# 4. test.py: input size from the checkpoint ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A stage-1 checkpoint of an untrained resnet18 'trained' at 32x16."""
    from model import build_model
    from utils.checkpoint import atomic_torch_save, make_checkpoint

    model = build_model(arch="resnet18", num_classes=5, pretrained="none")
    path = str(tmp_path_factory.mktemp("ckpt") / "final.pth")
    atomic_torch_save(make_checkpoint(model, stage="baseline", phase="final", dataset="sysu", trial=None,
                                      epoch=0, args={"img_h": 32, "img_w": 16, "arch": "resnet18"}), path)
    return path


def _testpy(synth, ckpt, out, extra, capsys):
    sys.path.insert(0, ROOT)
    import test as testpy

    testpy.main(["--dataset", "sysu", "--data-dir", str(synth), "--resume-net1", ckpt, "--device", "cpu",
                 "--workers", "0", "--gallery-trials", "2", "--out", str(out), *extra])
    return json.loads(out.read_text()), capsys.readouterr().err


def test_testpy_takes_size_from_checkpoint(synth, tiny_ckpt, tmp_path, capsys):
    record, err = _testpy(synth, tiny_ckpt, tmp_path / "r.json", [], capsys)
    assert (record["arch"], record["img_h"], record["img_w"]) == ("resnet18", 32, 16)
    assert (record["flip"], record["shot"], record["gallery_trials"]) == (False, 1, 2)
    assert "warning" not in err


def test_testpy_warns_on_other_size(synth, tiny_ckpt, tmp_path, capsys):
    record, err = _testpy(synth, tiny_ckpt, tmp_path / "r.json", ["--img-h", "64", "--img-w", "32", "--flip"],
                          capsys)
    assert (record["img_h"], record["img_w"], record["flip"]) == (64, 32, True)
    assert re.search(r"warning: .* evaluated at 64x32 but trained at 32x16", err)


# 5./6. run directory: orphan temp files, args.json per start ----------------------------------

def _prepare(synth, out, extra=()):
    from utils.args import parse
    from utils.run import prepare_run
    from utils.settings import stage2_settings

    args = parse(_parser("main"), ["--dataset", "sysu", "--data-dir", str(synth), "--resume-net1", "x.pth",
                                   "--output-dir", str(out), "--device", "cpu", *extra])
    return prepare_run(stage2_settings(args), last_checkpoint="last.pth")


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
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert rec["code_version"] == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_code_version_without_git(monkeypatch):
    from utils import run

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(run.subprocess, "run", no_git)
    assert run.code_version() == "unknown"


# 7. checkpoints: permissions, 1-based epochs, version 1 ---------------------------------------

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


@pytest.mark.parametrize("epoch, step, epochs, due", [
    (1, 1, 5, False), (2, 1, 5, True), (5, 1, 5, True), (1, 1, 1, True),  # first epoch only when it is the last
    (2, 2, 5, True), (3, 2, 5, False), (5, 2, 5, True), (3, 0, 3, False)])
def test_stage2_skips_evaluating_the_first_epoch(epoch, step, epochs, due):
    from utils.train.loop import evaluation_due

    assert evaluation_due(epoch, step, epochs, first=False) is due


# 8. one-line errors from DataLoader workers ----------------------------------------------------

def test_worker_wrapped_error_keeps_only_the_message():
    from data.sample import DataError
    from utils.cli import error_message

    wrapped = DataError('Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call '
                        'last):\n  File "x.py", line 3, in f\ndata.sample.DataError: image a.jpg cannot be decoded\n')
    assert error_message(wrapped) == "image a.jpg cannot be decoded"
    assert error_message(DataError("plain: message")) == "plain: message"


# 9. fidelity: the joint phase feeds the infrared batch to the mixed memory first ---------------

def test_joint_step_updates_shared_memory_ir_first():
    """One shared memory for both calls (joint phase): the rows must end as if the infrared features
    were fed before the visible ones (released order), which differs from the other order."""
    import torch
    from memory.cluster_memory import ClusterMemory
    from utils.train.stage1_steps import memory_step

    torch.manual_seed(0)
    feat = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)  # 2 views x 2 rgb, then 2 ir

    class Fixed(torch.nn.Module):
        def forward(self, x_rgb, x_ir):
            return type("Out", (), {"feat": feat.clone().requires_grad_(True)})()

    y = torch.tensor([0, 1])
    rgb_batch = ((torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)), y, None, None)
    ir_batch = (torch.zeros(2, 3, 4, 4), y, None, None)
    cents = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)

    def memory():
        m = ClusterMemory(8, 2)
        m.set_centroids(cents.clone())
        return m

    shared = memory()
    losses = memory_step(Fixed(), rgb_batch, ir_batch, shared, shared, torch.device("cpu"))
    sum(losses.values()).backward()

    def replay(first_ir: bool):
        m = memory()
        x = feat.clone().requires_grad_(True)
        parts = [(x[4:], y), (x[:4], torch.cat([y, y]))]
        loss = sum(m(f, t) for f, t in (parts if first_ir else parts[::-1]))
        loss.backward()
        return m.features

    assert torch.allclose(shared.features, replay(first_ir=True))
    assert not torch.allclose(shared.features, replay(first_ir=False))


def test_stage2_wrap_skips_data_parallel(monkeypatch):
    """Several visible GPUs without torchrun: stage 1 wraps in DataParallel (as released), stage 2
    (data_parallel=False) trains the plain model on one GPU (as released)."""
    import torch
    from utils.distributed import DistInfo, wrap_model

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    model = torch.nn.Linear(2, 2)
    cuda = torch.device("cuda")
    assert isinstance(wrap_model(model, DistInfo(), cuda), torch.nn.DataParallel)
    assert wrap_model(model, DistInfo(), cuda, data_parallel=False) is model


def test_log_marks_every_start_of_a_run(synth, tmp_path):
    """A failed attempt and its corrected rerun share log.txt: each start is marked with its time and command."""
    _prepare(synth, tmp_path, ["--batch-ids", "4"])
    _prepare(synth, tmp_path, ["--batch-ids", "2"])
    starts = [line for line in (tmp_path / "sysu" / "mmm" / "log.txt").read_text().splitlines()
              if "==== start " in line]
    assert len(starts) == 2 and all("(code " in line for line in starts)
