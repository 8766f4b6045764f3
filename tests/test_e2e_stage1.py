"""End-to-end tests of stage 1 through ``baseline_sysu.py`` and ``baseline_regdb.py`` as subprocesses, on
small generated datasets, on the CPU (issues 3 and 4, "Done when"):

* a two-epoch stage-1 run of each baseline script, killed (SIGKILL) after a checkpoint and continued
  with ``--resume`` (SYSU is killed in the intra phase, RegDB in the joint phase, so both resume
  paths run); a rerun without ``--resume`` into the finished run directory is refused;
* a kill between a checkpoint write and its metrics line, resumed (:func:`test_resume_after_kill_between_checkpoint_and_metrics`);
* the stage-1 artifact round trip: paths against the dataset listing, shapes, metadata, the labels
  against a re-clustering of the stored features, the features against ``final.pth``, and the
  by-path alignment stage 2 uses.

The runs are jobs of tests/e2e_jobs.py, shared with the other tests/test_e2e_*.py modules and run once
per session; the tests only check what the jobs left behind.
"""
from __future__ import annotations

import json
import os
import signal
from typing import Dict, List

import numpy as np
import pytest

from e2e_harness import (Stage1, Synth, Window, assert_ok, assert_refused, check_metric_dict, load_pth,
                         metrics_lines, phase_epochs)
from e2e_jobs import needs, rerun_without_resume

pytestmark = pytest.mark.slow  # the jobs run the entry points as processes


def _check_stage1_resume(s: Stage1, killed_in: str) -> List[Dict]:
    """Assertions shared by both baseline scripts; returns the metrics records."""
    # the first run really was interrupted before the end
    assert s.first.signalled and s.first.returncode == -signal.SIGKILL, s.first.output[-3000:]
    assert not s.after_kill["final"] and not s.after_kill["artifact"], s.after_kill
    assert s.after_kill[f"{killed_in}_last"], s.after_kill
    # the rerun with --resume continued it
    assert_ok(s.resumed)
    assert "Traceback" not in s.resumed.stderr
    log = (s.run_dir / "log.txt").read_text()
    assert f"resumed {killed_in} phase from" in log and "resuming" in log, log
    for phase, epoch in s.after_kill["records"]:  # epochs finished before the kill are not run again
        assert f"[{phase} {epoch}/2] lr" not in s.resumed.stdout, s.resumed.stdout[-3000:]
    records = metrics_lines(s.run_dir)
    assert phase_epochs(records) == [("intra", 1), ("intra", 2), ("joint", 1), ("joint", 2)]  # 1-based
    for name in ("final.pth", "pseudo_labels.npz", "pseudo_labels.json", "args.json",
                 "intra/last.pth", "joint/last.pth"):
        assert (s.run_dir / name).is_file(), name
    for r in records:
        for key in ("rgb_clusters", "ir_clusters", "rgb_outliers", "ir_outliers", "lr", "seconds",
                    "ari_rgb", "ari_ir"):
            assert key in r, (key, r)
        assert -1.0 <= r["ari_rgb"] <= 1.0 and -1.0 <= r["ari_ir"] <= 1.0
        assert ("joint_clusters" in r and "ari_joint" in r) == (r["phase"] == "joint"), r
    assert any("loss_rgb" in r and "loss_ir" in r for r in records if r["phase"] == "intra"), \
        "no intra epoch trained (too few clusters?)"
    evaluated = [r for r in records if "eval" in r]
    assert [(r["phase"], r["epoch"]) for r in evaluated] == [("intra", 2), ("joint", 2)]  # --eval-step 2
    for r in evaluated:
        for name, m in r["eval"].items():
            check_metric_dict(m, f"{r['phase']} {r['epoch']} {name}")
    return records


@needs("sysu_stage1")
def test_baseline_sysu_resume_after_interruption(e2e):
    """baseline_sysu.py: SIGKILL in the intra phase, --resume finishes every epoch exactly once."""
    s: Stage1 = e2e.get("sysu_stage1")
    records = _check_stage1_resume(s, "intra")
    assert set(records[-1]["eval"]) == {"all-search", "indoor-search"}
    final = load_pth(s.run_dir / "final.pth")
    assert (final["stage"], final["phase"], final["dataset"], final["trial"], final["arch"]) == \
        ("baseline", "final", "sysu", None, "resnet18")
    last = load_pth(s.run_dir / "joint" / "last.pth")
    assert last["epoch"] == 2 and last["phase"] == "joint" and last["optimizer"] is not None
    args = json.loads((s.run_dir / "args.json").read_text())
    assert args["eps"] == 0.45 and args["epochs"] == 2 and args["dataset"] == "sysu"


@needs("regdb_stage1")
def test_baseline_regdb_resume_after_interruption(e2e):
    """baseline_regdb.py --trial 1: SIGKILL in the joint phase; --resume skips the finished intra phase."""
    s: Stage1 = e2e.get("regdb_stage1")
    records = _check_stage1_resume(s, "joint")
    assert "[intra " not in s.resumed.stdout  # the intra phase is not rerun at all
    assert set(records[-1]["eval"]) == {"visible2thermal"}
    final = load_pth(s.run_dir / "final.pth")
    assert (final["stage"], final["dataset"], final["trial"]) == ("baseline", "regdb", 1)


@needs("regdb_window")
def test_resume_after_kill_between_checkpoint_and_metrics(e2e):
    """The state a kill leaves right after ``joint/last.pth`` (epoch 1) was written but before its
    metrics line: resuming must still give one metrics record per (phase, epoch)."""
    w: Window = e2e.get("regdb_window")
    assert w.lines_before == [("intra", 1), ("intra", 2), ("joint", 1)]
    assert_ok(w.resumed)
    assert phase_epochs(metrics_lines(w.run_dir)) == [("intra", 1), ("intra", 2), ("joint", 1), ("joint", 2)]


@needs("sysu_stage1")
def test_baseline_refuses_existing_run_without_resume(e2e, capsys):
    """Rerunning into a run directory that holds a run, without --resume: exit 2, nothing touched."""
    s: Stage1 = e2e.get("sysu_stage1")
    proc, before, after = rerun_without_resume(e2e, capsys)
    assert_refused(proc, str(s.run_dir), "--resume")
    assert after == before


@needs("sysu_stage1")
def test_stage1_artifact_round_trip(e2e):
    """pseudo_labels.npz: paths = the dataset listing, shapes, metadata, labels = clustering of the
    stored features, features = the final.pth model's; stage 2's path alignment inverts a shuffle."""
    import torch

    from clustering.dbscan import pseudo_labels
    from data.datasets import load_train
    from model import build_model
    from utils.artifacts import align_to_samples, load_artifact, relative_paths
    from utils.checkpoint import load_checkpoint, load_model_state
    from utils.evaluation.features import Extraction, extract_features
    from utils.settings import CLUSTER_INTERPOLATION

    synth: Synth = e2e.get("synth")
    s: Stage1 = e2e.get("sysu_stage1")
    assert_ok(s.resumed)
    art = load_artifact(str(s.run_dir / "pseudo_labels.npz"))
    meta = art["meta"]
    assert (meta["dataset"], meta["trial"], meta["eps"], meta["k1"], meta["k2"]) == ("sysu", None, 0.45, 15, 6)
    samples = dict(zip(("rgb", "ir"), load_train("sysu", str(synth.sysu))))
    final = load_checkpoint(str(s.run_dir / "final.pth"))
    model = build_model(arch=final["arch"], num_classes=final["num_classes"], pretrained="none",
                        non_local=final["non_local"])
    load_model_state(model, final, "final.pth")
    for m in ("rgb", "ir"):
        paths, feats, labels = art[f"paths_{m}"], art[f"features_{m}"], art[f"labels_{m}"]
        listing = relative_paths(samples[m], str(synth.sysu))
        assert len(set(paths)) == len(paths) == len(listing)
        assert sorted(paths) == sorted(listing)
        assert all(not os.path.isabs(p) and (synth.sysu / p).is_file() for p in paths)
        assert feats.shape == (len(paths), model.dim) and feats.dtype == np.float32 and np.isfinite(feats).all()
        norms = np.linalg.norm(feats, axis=1)  # mean of two unit vectors, not re-normalised (D.2 step 1)
        assert (norms > 0.5).all() and (norms <= 1 + 1e-5).all()
        assert labels.shape == (len(paths),) and labels.dtype == np.int64
        k = int(labels.max()) + 1
        assert k == meta[f"{m}_clusters"] >= 2 and labels.min() >= -1
        assert set(np.unique(labels[labels >= 0])) == set(range(k))  # contiguous 0..K-1
        assert int((labels < 0).sum()) == meta[f"{m}_outliers"]
        # the stored labels are the clustering (with the stored settings) of the stored features
        again = pseudo_labels(torch.from_numpy(feats), eps=meta["eps"], k1=meta["k1"], k2=meta["k2"])
        np.testing.assert_array_equal(again, labels)
        # the stored features are those of final.pth (flip-averaged, bicubic, as in training)
        by_path = dict(zip(listing, samples[m]))
        pick = [by_path[p] for p in paths[:12]]
        how = Extraction(device=torch.device("cpu"), img_h=32, img_w=16, interpolation=CLUSTER_INTERPOLATION,
                         batch_size=32, workers=0, flip=True, renormalize=False, progress=False)
        f = extract_features(model, pick, how)
        np.testing.assert_allclose(f.numpy(), feats[:12], atol=1e-4)
        # stage 2 attaches by path: a shuffled listing gets the same rows back
        order = np.random.default_rng(0).permutation(len(samples[m]))
        shuffled = [samples[m][i] for i in order]
        f_al, l_al = align_to_samples(art, m, shuffled, str(synth.sysu))
        row = {p: i for i, p in enumerate(paths)}
        idx = [row[p] for p in relative_paths(shuffled, str(synth.sysu))]
        np.testing.assert_array_equal(l_al, labels[idx])
        np.testing.assert_array_equal(f_al, feats[idx])
