"""End-to-end tests of ``test.py`` as a subprocess, on small generated datasets, on the CPU (issue 5,
"Done when"):

* ``test.py`` on a stage-2 checkpoint (SYSU, 10 gallery trials) and a stage-1 checkpoint (RegDB,
  both directions), its JSON checked and cross-checked against the evaluation logged in training;
* refusals, each exit status 2 with one ``error:`` line on stderr and no traceback: a missing file, a
  non-checkpoint, another dataset's checkpoint, another ``--arch``.

The runs are jobs of tests/e2e_jobs.py (the training runs they evaluate included), shared with the other
tests/test_e2e_*.py modules and run once per session; the tests only check what the jobs left behind.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from e2e_harness import METRICS, Stage1, Stage2, assert_ok, assert_refused, check_metric_dict, load_pth, metrics_lines
from e2e_jobs import TESTPY_REFUSAL_NEEDS, needs, refused_testpy

pytestmark = pytest.mark.slow  # the jobs run the entry points as processes


@needs("sysu_stage2", "testpy_sysu")
def test_testpy_sysu_on_stage2_checkpoint(e2e):
    """test.py on the stage-2 best.pth: 10 gallery trials, JSON next to the checkpoint, and trial 0
    equal to the evaluation main.py logged for that epoch (same model, gallery and preprocessing)."""
    s: Stage2 = e2e.get("sysu_stage2")
    proc = e2e.get("testpy_sysu")
    assert_ok(proc)
    assert "all-search MEAN" in proc.stdout
    ckpt = s.run_dir / "best.pth"
    rec = json.loads((s.run_dir / "test_sysu_all.json").read_text())
    assert set(rec) == {"dataset", "trial", "checkpoint", "stage", "epoch", "arch", "pretrained", "img_h", "img_w",
                        "mode", "shot", "flip", "gallery_trials", "results"}
    assert rec["pretrained"] == {"source": "random init", "file": "", "sha256": ""}  # the e2e runs use --pretrained none
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


@needs("regdb_stage1", "testpy_regdb")
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
    pytest.param(case, fragments, marks=needs(*TESTPY_REFUSAL_NEEDS[case])) for case, fragments in [
        ("missing", ["no file", "nope.pth"]),
        ("not_a_checkpoint", ["not a readable checkpoint", "model.pth"]),
        ("other_dataset", ["regdb", "--dataset sysu"]),
        ("other_arch", ["resnet18", "--arch resnet50"]),
    ]])
def test_testpy_refusals(e2e, case, fragments, tmp_path, capsys):
    """test.py --dataset sysu refuses (exit 2, one line, no JSON written): a missing file, a file
    that is not a checkpoint, a RegDB checkpoint, a resnet18 checkpoint with --arch resnet50."""
    proc, out = refused_testpy(e2e, case, tmp_path, capsys)
    assert_refused(proc, *fragments)
    assert not out.exists()
