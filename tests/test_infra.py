"""Checkpoints, the stage-1 artifact, argument parsing, DataParallel row order, stage-2 schedule."""
import os

import numpy as np
import pytest
import torch

from data.sample import IR, RGB, DataError, Sample
from model import build_model
from utils.args import stage1_parser, stage2_parser, parse
from utils.artifacts import align_to_samples, find_artifact, load_artifact, save_artifact
from utils.checkpoint import (add_training_state, atomic_torch_save, check_compatible, load_checkpoint, load_model_state,
                              make_checkpoint)
from utils.train.stage2_steps import stage2_lr


@pytest.fixture(scope="module")
def tiny():
    return build_model(arch="resnet18", num_classes=5, pretrained="none")


def test_checkpoint_round_trip(tmp_path, tiny):
    path = str(tmp_path / "run" / "last.pth")
    ckpt = make_checkpoint(tiny, stage="mmm", phase="train", dataset="sysu", trial=None, epoch=3,
                           args={"lr": 0.1}, metrics={"r1": 1.0})
    add_training_state(ckpt, torch.optim.SGD(tiny.parameters(), lr=0.1), best_metric=1.0)
    atomic_torch_save(ckpt, path)
    assert os.listdir(tmp_path / "run") == ["last.pth"]  # no temporary left behind
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and back["num_classes"] == 5 and back["arch"] == "resnet18"
    assert back["best_metric"] == 1.0 and back["optimizer"]["param_groups"][0]["lr"] == 0.1
    other = build_model(arch="resnet18", num_classes=5, pretrained="none")
    load_model_state(other, back, path)
    for (k, a), b in zip(tiny.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_refusals(tmp_path, tiny):
    with pytest.raises(DataError, match="no file"):
        load_checkpoint(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_checkpoint(str(junk))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(DataError, match="not a checkpoint of this project"):
        load_checkpoint(str(foreign))
    ckpt = make_checkpoint(tiny, stage="mmm", phase="train", dataset="regdb", trial=2, epoch=0, args={})
    with pytest.raises(DataError, match="--arch resnet18"):
        check_compatible(ckpt, "x.pth", arch="resnet50")
    with pytest.raises(DataError, match="regdb"):
        check_compatible(ckpt, "x.pth", dataset="sysu")
    with pytest.raises(DataError, match="trial 2"):
        check_compatible(ckpt, "x.pth", trial=3)
    bigger = build_model(arch="resnet18", num_classes=7, pretrained="none")
    with pytest.raises(DataError, match="does not fit"):
        load_model_state(bigger, ckpt, "x.pth")
    load_model_state(bigger, ckpt, "x.pth", skip_classifier=True)  # stage 2 from another class count


def _samples(root, modality, n):
    return [Sample(os.path.join(root, modality, f"{i:03d}.jpg"), i % 3, 1, modality) for i in range(n)]


def test_artifact_round_trip_and_alignment_by_path(tmp_path):
    root = str(tmp_path / "data")
    s = {RGB: _samples(root, RGB, 6), IR: _samples(root, IR, 4)}
    feats = {m: np.random.RandomState(0).rand(len(s[m]), 3).astype(np.float32) for m in s}
    labels = {RGB: np.array([0, 0, 1, 1, -1, 2]), IR: np.array([1, -1, 0, 0])}
    run = tmp_path / "logs" / "baseline"
    path = save_artifact(str(run), root, s, feats, labels, {"dataset": "sysu", "trial": None})
    assert find_artifact(str(run / "final.pth")) == path
    assert find_artifact(str(run / "joint" / "best.pth")) == path
    art = load_artifact(path)
    assert art["meta"]["dataset"] == "sysu"
    # A reversed listing of the same images gets the same labels, matched by path, not position.
    rev = list(reversed(s[RGB]))
    f, lab = align_to_samples(art, RGB, rev, root)
    np.testing.assert_array_equal(lab, labels[RGB][::-1])
    np.testing.assert_array_equal(f, feats[RGB][::-1])
    # The same images under a moved dataset root still match (paths are stored relative).
    moved = str(tmp_path / "elsewhere")
    f2, lab2 = align_to_samples(art, RGB, _samples(moved, RGB, 6), moved)
    np.testing.assert_array_equal(lab2, labels[RGB])
    with pytest.raises(DataError, match="do not match the dataset on disk"):
        align_to_samples(art, RGB, s[RGB][:5], root)
    with pytest.raises(DataError, match="do not match the dataset on disk"):
        align_to_samples(art, IR, _samples(root, RGB, 4), root)
    with pytest.raises(DataError, match="no pseudo_labels.npz"):
        find_artifact(str(tmp_path / "nowhere" / "final.pth"))


def test_parsers_aliases_and_dataset_defaults(capsys):
    a = parse(stage1_parser("sysu"), ["--data-dir", "d"], dataset="sysu")
    assert (a.eps, a.k1_joint, a.k2_joint, a.iters, a.seed, a.img_h) == (0.6, 40, 32, 200, 1, 288)
    b = parse(stage1_parser("regdb"), ["--data_dir", "d", "--trial", "3", "--eps", "0.4", "--height", "64"],
              dataset="regdb")
    assert (b.eps, b.k1_joint, b.k2_joint, b.iters, b.trial, b.img_h) == (0.4, 38, 18, 100, 3, 64)
    for argv in (["--data-dir", "d"], ["--data-dir", "d", "--trial", "11"], ["--data-dir", "d", "--trial", "x"]):
        with pytest.raises(SystemExit) as err:  # a usage error at parse time (exit status 2)
            parse(stage1_parser("regdb"), argv, dataset="regdb")
        assert err.value.code == 2 and "error: --trial " in capsys.readouterr().err
    m = parse(stage2_parser(), ["--dataset", "sysu", "--data-dir", "d", "--resume_net1", "c.pth",
                             "--sm_w", "0.3", "--warm-epochs", "2"])
    assert (m.intra_weight, m.inter_weight, m.inter_start_epoch, m.seed, m.resume_net1) == (0.3, 0.05, 2, 0, "c.pth")


def _usage_error(parser, argv, capsys, dataset=None) -> str:
    """The last stderr line of a command line that parse() refuses (exit status 2)."""
    with pytest.raises(SystemExit) as err:
        parse(parser, argv, dataset=dataset)
    assert err.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_baseline_batch_size_checks(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ok = ["--data-dir", "d", "-b", "24", "--num-instances", "4"]
    parse(stage1_parser("sysu"), ok, dataset="sysu")
    bad = ["--data-dir", "d", "-b", "30", "--num-instances", "4"]
    assert _usage_error(stage1_parser("sysu"), bad, capsys, "sysu").endswith(
        "error: --batch-size 30 must be a multiple of --num-instances 4")
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun: 24 = 6 identities, not divisible among 4 processes
    assert "multiple of --num-instances x processes (4 x 4)" in _usage_error(stage1_parser("sysu"), ok, capsys, "sysu")


def test_stage2_batch_ids_must_split_over_the_processes(monkeypatch, capsys):
    argv = ["--dataset", "sysu", "--data-dir", "d", "--resume_net1", "c.pth", "--batch-ids", "6"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _usage_error(stage2_parser(), argv, capsys).endswith(
        "error: --batch-ids 6 must be a multiple of the number of processes (4): the batch is split across them "
        "by whole identities")
    monkeypatch.setenv("WORLD_SIZE", "3")
    parse(stage2_parser(), argv)


def test_stage2_learning_rate_schedule():
    assert [round(stage2_lr(e, 0.1), 6) for e in (0, 4, 9, 10, 19, 20, 39, 40, 99)] == \
        [0.01, 0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_replica_order_restores_modality_blocks():
    from utils.device import replica_order

    class FakeDP(torch.nn.DataParallel):
        def __init__(self, k):  # no GPUs needed: only device_ids is read
            torch.nn.Module.__init__(self)
            self.device_ids = list(range(k))

    for n_rgb, n_ir, k in ((8, 4, 2), (7, 5, 3), (3, 5, 4), (256, 128, 3)):
        rgb, ir = torch.arange(n_rgb), torch.arange(n_ir) + 1000
        chunks_r, chunks_i = rgb.chunk(k), ir.chunk(k)
        gathered = torch.cat([c for i in range(max(len(chunks_r), len(chunks_i)))
                              for c in (chunks_r[i:i + 1] + chunks_i[i:i + 1])])
        order = replica_order(n_rgb, n_ir, FakeDP(k))
        assert torch.equal(gathered[order], torch.cat([rgb, ir]))
    assert replica_order(4, 4, torch.nn.Linear(1, 1)) is None


# ---------------------------------------------------------------- shell scripts

def _script_commands(path):
    """(entry point, argv) of every entry-point call in a shell script, with the shell variables
    replaced by sample values (loop variables by valid ones, ``"$@"`` by nothing)."""
    import re
    import shlex
    text = open(path).read().replace("\\\n", " ")
    arrays = {name: body for name, body in re.findall(r"^(\w+)=\((.*)\)\s*$", text, flags=re.M)}
    values = {"T": "1", "MODE": "all"}
    calls = []
    for line in text.splitlines():
        m = re.search(r'(?:python|"\$PY")\s+((?:baseline_sysu|baseline_regdb|main|test)\.py)\b(.*)', line)
        if not m or line.lstrip().startswith("#"):
            continue
        args = m.group(2).replace('"$@"', "")
        args = re.sub(r'"\$\{(\w+)\[@\]\}"', lambda a: arrays[a.group(1)], args)
        args = re.sub(r"\$\{?(\w+)[^}\s\"/]*\}?", lambda v: values.get(v.group(1), "x"), args)
        calls.append((m.group(1), shlex.split(args)))
    return calls


# demo.sh calls the entry points through scripts/bench_learning.py, whose command lines are checked
# against the same parsers in tests/test_bench_learning.py (test_stage_command_lines_parse).
@pytest.mark.parametrize("script", ["train_sysu.sh", "train_regdb.sh"])
def test_shell_scripts_use_existing_flags(script, repo_root):
    """Every entry-point call in scripts/*.sh parses: a renamed flag fails here, not on a user's run."""
    import importlib.util
    root = str(repo_root)
    spec = importlib.util.spec_from_file_location("mmm_test_entry", os.path.join(root, "test.py"))
    test_entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_entry)
    parsers = {"baseline_sysu.py": lambda a: parse(stage1_parser("sysu"), a, dataset="sysu"),
               "baseline_regdb.py": lambda a: parse(stage1_parser("regdb"), a, dataset="regdb"),
               "main.py": lambda a: parse(stage2_parser(), a),
               "test.py": lambda a: parse(test_entry.build_parser(), a)}
    calls = _script_commands(os.path.join(root, "scripts", script))
    assert {name for name, _ in calls} >= ({"baseline_sysu.py", "main.py", "test.py"} if "sysu" in script
                                           else {"baseline_regdb.py", "main.py", "test.py"})
    for name, argv in calls:
        try:
            args = parsers[name](argv)
        except SystemExit as err:
            pytest.fail(f"scripts/{script}: {name} {' '.join(argv)} is refused by the parser ({err})")
        assert args.data_dir, (script, name)


@pytest.mark.parametrize("cores, busy, expected", [(2, 0.1, 2), (2, 1.0, 1), (16, 3.0, 8), (16, 9.0, 1), (1, 0.0, 1)])
def test_default_threads_follows_cores_and_load(monkeypatch, cores, busy, expected):
    import utils.device as device

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(device, "busy_cores", lambda: busy)
    assert device.default_threads() == expected
    monkeypatch.setattr(device, "busy_cores", lambda: None)  # no /proc/stat: the load average decides
    monkeypatch.setattr(os, "getloadavg", lambda: (busy, busy, busy))
    assert device.default_threads() == expected


def test_busy_cores_reads_proc_stat():
    from utils.device import busy_cores

    busy = busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6
