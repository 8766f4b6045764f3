"""End-to-end tests of stage 2 through ``main.py`` as a subprocess, on small generated datasets, on the
CPU (issue 5, "Done when"):

* a two-epoch ``main.py`` run from the SYSU stage-1 checkpoint, interrupted with Ctrl-C (a real SIGINT,
  sent from inside the run at the end of epoch 2's training, before its checkpoint: no timing involved)
  and resumed;
* refusals, each exit status 2 with one ``error:`` line on stderr and no traceback: an artifact of
  another dataset or trial, a checkpoint of another dataset, an artifact whose image paths do not match
  the data on disk.

The runs are jobs of tests/e2e_jobs.py (the stage-1 runs they start from included), shared with the
other tests/test_e2e_*.py modules and run once per session; the tests only check what the jobs left behind.
"""
from __future__ import annotations

import numpy as np
import pytest

from e2e_harness import Stage2, assert_ok, assert_refused, check_metric_dict, load_pth, metrics_lines
from e2e_jobs import MAIN_REFUSAL_NEEDS, main_refusal, needs

pytestmark = pytest.mark.slow  # the jobs run the entry points as processes


@needs("sysu_stage2")
def test_main_resume_after_interruption(e2e):
    """main.py: Ctrl-C during epoch 2 (exit 130, no traceback), --resume runs epoch 2 only."""
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
    pytest.param(case, fragments, marks=needs(*MAIN_REFUSAL_NEEDS[case])) for case, fragments in [
        ("artifact_other_dataset", ["pseudo_labels.npz", "regdb", "--dataset sysu"]),
        ("artifact_other_trial", ["trial 1", "--trial 2"]),
        ("checkpoint_other_dataset", ["final.pth", "regdb", "--dataset sysu"]),
        ("artifact_paths_not_matching", ["rgb images do not match the dataset on disk"]),
    ]])
def test_main_refuses_foreign_stage1_output(e2e, case, fragments, tmp_path, capsys):
    """main.py refuses (exit 2, one line): the RegDB artifact for --dataset sysu, the trial-1 artifact
    for --trial 2, the RegDB checkpoint with the right SYSU artifact, and an artifact whose image
    paths do not match the data on disk (one training image removed)."""
    assert_refused(main_refusal(e2e, case, tmp_path, capsys), *fragments)
