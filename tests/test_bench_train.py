"""scripts/bench_train.py (runs on the CPU at small size, writes its JSON, estimates from its parts with the
documented formula) and scripts/gpu_check.sh (bash syntax; every command line accepted by the real parser
of the program it calls)."""
import importlib.util
import json
import os

import pytest
import torch

from data.sample import DataError
from e2e_harness import assert_ok
from e2e_jobs import needs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("scripts/bench_train.py", "bench_train_under_test")


@pytest.mark.slow  # --workers 4: DataLoader worker processes
@needs("bench_train_small")
def test_bench_runs_small_on_cpu_and_writes_json(bench, e2e):
    # main(["--device", "cpu", "--amp-modes", "off", "--loader-images", "6", "--workdir", W, "--out", out,
    # "--workers", "4"]) in a process of its own, in the background: tests/e2e_jobs.py _bench_train_small
    proc, out, returned = e2e.get("bench_train_small")
    assert_ok(proc)
    result = json.load(open(returned))
    saved = json.load(open(out))
    assert saved["size"] == "small" and saved["device"] == "cpu" and saved["workers"] == 4
    for state in ("decoded", "cached"):
        assert {"stage1_rgb", "stage1_ir", "stage1", "stage2"} == set(saved["loader"][state])
        assert all(v > 0 for v in saved["loader"][state].values())
    assert set(saved["model"]) == {"off", "off+cl"}
    for row in saved["model"].values():
        assert {"stage1_step", "stage2_step", "stage2_forward", "extract_images_per_s"} == set(row)
        assert all(v > 0 for v in row.values())
    assert set(saved["cluster"]) == {"rgb", "ir", "joint"}
    assert saved["cluster"]["joint"]["n"] == saved["cluster"]["rgb"]["n"] + saved["cluster"]["ir"]["n"]
    assert all(row["clusters"] > 0 for row in saved["cluster"].values())
    assert set(saved["estimate"]) == {f"{m} {s}" for m in saved["model"] for s in ("decoded", "cached")}
    assert saved == json.loads(json.dumps(result))
    text = proc.stdout
    assert "images/s on one core" in text and "NOT an estimate" in text  # small sizes say so


def test_estimate_formula(bench):
    """The documented formula, checked on round numbers: a GPU-bound and a loader-bound case."""
    loader = {"cached": {"stage1_rgb": 1000.0, "stage1_ir": 1000.0, "stage2": 1000.0}}
    model = {"off": {"stage1_step": 0.5, "stage2_step": 0.1, "stage2_forward": 0.05, "extract_images_per_s": 1000.0}}
    cluster = {"rgb": {"seconds": 3.0}, "ir": {"seconds": 1.0}, "joint": {"seconds": 6.0}}
    s = bench.SYSU
    x = (s["n_rgb"] + s["n_ir"]) / 1000.0
    est = bench.estimate(loader, model, cluster, workers=8)["off cached"]
    stage1 = 50 * (200 * 0.5 + x + 4) + 50 * (400 * 0.5 + x + 4 + 6) + 100 * s["test1"] / 1000 + x + 4
    stage2 = 100 * (s["pass2"] * 0.1 + s["test2"] / 2000) + 95 * 2 * s["pass2"] * 0.05
    assert est["stage1_h"] == pytest.approx(stage1 / 3600) and est["stage2_h"] == pytest.approx(stage2 / 3600)
    assert not est["loader_bound"]
    slow = bench.estimate({"cached": {k: 10.0 for k in loader["cached"]}}, model, cluster, workers=1)["off cached"]
    assert slow["loader_bound"] and slow["stage1_h"] > est["stage1_h"] * 10  # 25.6 s per batch of 256 images


def test_bench_refuses_fp16_on_cpu(bench, tmp_path):
    with pytest.raises(DataError, match="fp16"):
        bench.main(["--device", "cpu", "--amp-modes", "fp16", "--parts", "step", "--out", ""])


# ------------------------------------------------------------------------------------------------ gpu_check.sh


# ------------------------------------------------------------------------------------------------ loaders
class _Pairs(torch.utils.data.Dataset):
    """Returns its (i_rgb, i_ir) index as a tensor: what a batch held is then visible."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.tensor(index)


@pytest.mark.slow  # DataLoader worker processes
def test_stage2_loader_keeps_its_workers_across_passes():
    """utils.train.stage2_steps.loader: with workers one persistent DataLoader per dataset serves every pass, each
    pass iterating the sampler it was given; without workers a plain loader per pass."""
    import typed_settings
    from utils.train.stage2_steps import loader

    ds = _Pairs()

    def ctx(workers):
        return typed_settings.context(typed_settings.stage2("--workers", str(workers)))
    passes = [[[(0, 1), (2, 3)], [(4, 5)]], [[(6, 7)], [(8, 9), (1, 0)]]]
    seen, loaders = [], []
    for sampler in passes:
        dl = loader(ds, sampler, ctx(2))
        loaders.append(dl)
        seen.append([b.tolist() for b in dl])
    assert loaders[0] is loaders[1] and loaders[0].persistent_workers and loaders[0].num_workers == 2
    assert seen == [[[list(p) for p in batch] for batch in sampler] for sampler in passes]
    plain = loader(_Pairs(), passes[0], ctx(0))
    assert not plain.persistent_workers and [b.tolist() for b in plain] == seen[0]
