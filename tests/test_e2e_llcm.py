"""End-to-end test of LLCM through the three entry points as subprocesses (issue 14): baseline_llcm.py ->
main.py -> test.py --rerank --visualize on generated LLCM data, on the CPU.

The runs are the ``llcm_chain`` job of tests/e2e_jobs.py (in the background while other tests run); the
test checks what they left behind.
"""
import json

import numpy as np
import pytest

from e2e_harness import METRICS, Chain, assert_ok, check_metric_dict, load_pth, metrics_lines
from e2e_jobs import needs

pytestmark = pytest.mark.slow  # the job runs the entry points as processes


@needs("llcm_chain")
def test_e2e_llcm_three_entry_points(e2e):
    """baseline_llcm.py -> main.py -> test.py --rerank --visualize on generated LLCM data, with the tiny
    settings of tests/e2e_harness.py; test.py's visible->infrared trial 0 equals main.py's evaluation of
    that epoch (same model, gallery and preprocessing)."""
    chain: Chain = e2e.get("llcm_chain")
    out = chain.out
    s1 = chain.runs[0]
    assert_ok(s1)
    base = out / "llcm" / "baseline"
    records = metrics_lines(base)
    assert [r["phase"] for r in records] == ["intra", "intra", "joint", "joint"]
    for r in records:
        if "eval" in r:
            assert list(r["eval"]) == ["visible2infrared"]
            check_metric_dict(r["eval"]["visible2infrared"], "stage 1")
    assert json.loads((base / "args.json").read_text())["k1"] == 15     # STAGE1 overrides the LLCM 25
    assert load_pth(base / "final.pth")["dataset"] == "llcm"
    s2 = chain.runs[1]
    assert_ok(s2)
    mmm = out / "llcm" / "mmm"
    t = chain.runs[2]
    assert_ok(t)
    rec = json.loads((mmm / "test_llcm.json").read_text())
    assert (rec["dataset"], rec["trial"], rec["stage"], rec["gallery_trials"]) == ("llcm", None, "mmm", 10)
    assert rec["rerank"] == {"k1": 20, "k2": 6, "lambda": 0.3}
    for key in ("results", "results_rerank"):
        assert sorted(rec[key]) == ["infrared2visible", "visible2infrared"]
        for res in rec[key].values():
            assert sorted(res["splits"]) == sorted(f"trial{i}" for i in range(10))
            for name, m in res["splits"].items():
                check_metric_dict(m, f"{key} {name}")
            for k in METRICS:
                assert res["mean"][k] == pytest.approx(np.mean([m[k] for m in res["splits"].values()]), abs=1e-9)
    best_epoch = load_pth(mmm / "best.pth")["epoch"]
    assert rec["epoch"] == best_epoch and f"epoch {best_epoch})" in t.stdout
    logged = {r["epoch"]: r for r in metrics_lines(mmm)}[best_epoch]["eval"]["visible2infrared"]
    for k in METRICS:
        assert rec["results"]["visible2infrared"]["splits"]["trial0"][k] == pytest.approx(logged[k], abs=1e-6), k
    assert "[re-ranked k1=20 k2=6 lambda=0.3] infrared2visible MEAN" in t.stdout
    for name in ("test_llcm_visible2infrared_ranks.png", "test_llcm_infrared2visible_ranks.png", "test_llcm_cmc.png"):
        assert (mmm / name).is_file(), name
