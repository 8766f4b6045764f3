"""test.py's results are never overwritten silently (issue 19): the default file is named by the settings
that change the numbers, another evaluation is not replaced without --force, and ``--trial all --out F``
keeps every trial and saves the mean over the trials. In-process, on tiny generated data."""
import json
import os
import sys

import pytest

from data.sample import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("r1", "r5", "r10", "r20", "mAP", "mINP")


def _testpy(argv):
    sys.path.insert(0, ROOT)
    import test as testpy

    return testpy.main(argv)


def _save(path, dataset="sysu", trial=None, _models={}):
    from model import build_model
    from utils.checkpoint import atomic_torch_save, make_checkpoint

    if not _models:  # one untrained network for every checkpoint of the module
        _models["resnet18"] = build_model(arch="resnet18", num_classes=0, pretrained="none")
    model = _models["resnet18"]
    atomic_torch_save(make_checkpoint(model, stage="mmm", phase="train", dataset=dataset, trial=trial, epoch=2,
                                      args={"img_h": 32, "img_w": 16, "arch": "resnet18"}), str(path))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "best.pth"
    _save(path)
    return path


def _common(synth, ckpt):
    return ["--dataset", "sysu", "--data-dir", str(synth), "--resume-net1", str(ckpt), "--device", "cpu",
            "--workers", "0", "--gallery-trials", "2"]


def test_default_names_differ_by_settings(tiny_sysu, ckpt):
    """--shot 10 after a single-shot run writes its own file; the single-shot one is untouched."""
    _testpy(_common(tiny_sysu, ckpt))
    single = ckpt.parent / "test_sysu_all_g2.json"
    before = single.read_bytes()
    _testpy(_common(tiny_sysu, ckpt) + ["--shot", "10", "--flip"])
    assert single.read_bytes() == before
    other = json.loads((ckpt.parent / "test_sysu_all_shot10_flip_g2.json").read_text())
    assert (other["shot"], other["flip"]) == (10, True)
    _testpy(_common(tiny_sysu, ckpt))  # the same evaluation again replaces its own file
    assert json.loads(single.read_text())["shot"] == 1


def test_out_holding_another_evaluation_needs_force(tiny_sysu, ckpt, tmp_path):
    out = tmp_path / "r.json"
    _testpy(_common(tiny_sysu, ckpt) + ["--out", str(out)])
    before = out.read_bytes()
    with pytest.raises(DataError, match="--force") as info:
        _testpy(_common(tiny_sysu, ckpt) + ["--out", str(out), "--img-h", "64", "--img-w", "32"])
    assert str(out) in str(info.value) and "img_h" in str(info.value)
    assert out.read_bytes() == before
    _testpy(_common(tiny_sysu, ckpt) + ["--out", str(out), "--img-h", "64", "--img-w", "32", "--force"])
    assert json.loads(out.read_text())["img_h"] == 64


def test_out_that_is_not_a_result_is_kept(tiny_sysu, ckpt, tmp_path):
    out = tmp_path / "notes.json"
    out.write_text('{"my": "notes"}')
    with pytest.raises(DataError, match="not a test.py result"):
        _testpy(_common(tiny_sysu, ckpt) + ["--out", str(out)])
    assert out.read_text() == '{"my": "notes"}'


def test_trial_all_keeps_every_trial_and_saves_the_mean(tmp_path, monkeypatch):
    """RegDB --trial all --out F: F_trial<t>.json per trial and F with the mean over the 10 trials
    (the evaluation itself is replaced by known numbers: trial t scores r1 = t)."""
    from data.synthetic import generate_regdb
    from utils.evaluation import run_test
    from utils.evaluation.protocols import Evaluation

    root = tmp_path / "RegDB"
    generate_regdb(str(root), ids=4, seed=1, height=32, width=16, images_per_id=2)
    for t in range(1, 11):
        os.makedirs(tmp_path / f"regdb_trial{t}")
        _save(tmp_path / f"regdb_trial{t}" / "best.pth", dataset="regdb", trial=t)

    def fake(settings, plan, device, amp):
        ckpt = dict(stage="mmm", epoch=2, arch="resnet18", img_h=32, img_w=16)
        m = {k: float(plan.eval.trial) for k in METRICS}
        return ckpt, Evaluation({d: {"splits": {d: m}, "mean": m, "std": dict.fromkeys(METRICS, 0.0)}
                                 for d in ("visible2thermal", "thermal2visible")}, None)

    monkeypatch.setattr(run_test, "evaluate_checkpoint", fake)
    out = tmp_path / "regdb.json"
    argv = ["--dataset", "regdb", "--data-dir", str(root), "--trial", "all", "--device", "cpu", "--workers", "0",
            "--resume-net1", str(tmp_path / "regdb_trial{trial}" / "best.pth"), "--out", str(out)]
    _testpy(argv)
    for t in range(1, 11):
        rec = json.loads((tmp_path / f"regdb_trial{t}.json").read_text())
        assert rec["trial"] == t and rec["results"]["visible2thermal"]["mean"]["r1"] == t
    summary = json.loads(out.read_text())
    assert summary["trials"] == list(range(1, 11))
    assert summary["mean"]["visible2thermal"]["mean"]["r1"] == pytest.approx(5.5)
    assert summary["files"]["3"] == str(tmp_path / "regdb_trial3.json")
    _testpy(argv)  # the same evaluation again: allowed
    with pytest.raises(DataError, match="--force"):
        _testpy(argv + ["--tvsearch"])  # another evaluation into the same files
