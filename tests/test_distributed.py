"""torch.distributed (torchrun) support on the CPU with gloo, 2 processes.

* Helpers of utils/distributed.py in two spawned ranks: the stage-2 loss on the gathered batch
  gives the single-process gradient; rank-0 results and errors reach every rank.
* Short stage-1 and stage-2 runs under ``python -m torch.distributed.run --nproc_per_node 2`` on
  synthetic data: identical pseudo-labels, memories and model state on both ranks, files written by
  rank 0 only, resume; the same stage 1 in one process gives the same first clustering.

The runs (jobs of tests/e2e_ddp.py) report what each rank trained on through an observer of the training
events (utils/train/callbacks.py) that tests/observed_run.py passes to every process.
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from data.sample import DataError
from e2e_ddp import WORLD
from e2e_jobs import needs
from utils.distributed import DistInfo, gather_keep_grad, mean_over_ranks, run_on_main, sync_buffers
from utils.settings import LossSettings
from utils.train.stage2_steps import Stage2Batch, batch_losses, gather_outputs

pytestmark = [pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                 reason="needs torch.distributed with gloo"),
              pytest.mark.slow]  # every test starts processes (mp.spawn, torchrun)

# ----------------------------------------------------------------------------- helpers in 2 ranks


class _Tiny(nn.Module):
    """Stand-in for the two-stream network: pooled features and logits of a stacked batch."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        pool = self.body(x)
        return pool, self.head(pool)


def _stage2_losses(model, v1, v2, t, y, idx, probs, protos, dist):
    """batch_losses of a (local) batch through gather_outputs, as utils/train/stage2.batch_step does."""
    pool, logits = model(torch.cat([v1, v2, t]))
    n = len(v1)
    o = Stage2Batch(rgb1=pool[:n], rgb2=pool[n:2 * n], ir=pool[2 * n:], logits=logits, labels_rgb=y, labels_ir=y,
                    index_rgb=idx, index_ir=idx)
    loss = LossSettings(inter_start_epoch=0)  # every term, at the released weights
    return batch_losses(gather_outputs(o, dist), probs, protos, loss, epoch=1)


def _helpers_worker(rank, init_file):
    """One gloo rank; every check is an assert (mp.spawn re-raises a failing rank's error)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        dist = DistInfo(enabled=True, rank=rank, world_size=WORLD)
        g = torch.Generator().manual_seed(3)
        v1, v2, t = (torch.randn(8, 6, generator=g) for _ in range(3))
        y, idx = torch.tensor([0, 0, 1, 1, 2, 2, 1, 1]), torch.arange(8)
        probs = {k: torch.rand(8, generator=g) for k in ("v1", "v2", "ir")}
        protos = {k: torch.randn(3, 5, generator=g) for k in ("v1", "v2", "ir")}
        torch.manual_seed(0)
        ref = _Tiny()
        ddp = nn.parallel.DistributedDataParallel(_Tiny())
        ddp.module.load_state_dict(ref.state_dict())
        # Single process: the whole batch. Two ranks: rank r holds rows 4r..4r+3.
        want = _stage2_losses(ref, v1, v2, t, y, idx, probs, protos, DistInfo())
        sum(want.values()).backward()
        s = slice(4 * rank, 4 * rank + 4)
        got = _stage2_losses(ddp, v1[s], v2[s], t[s], y[s], idx[s], probs, protos, dist)
        (sum(got.values()) * WORLD).backward()
        for k in want:  # the loss of the gathered batch is the single-process loss
            assert torch.allclose(got[k], want[k], atol=1e-6), k
        for (name, p), q in zip(ddp.module.named_parameters(), ref.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6), name
        x = gather_keep_grad(torch.full((2, 1), float(rank), requires_grad=True), dist)
        assert x.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
        assert mean_over_ranks({"loss": float(rank)}, dist) == {"loss": 0.5}
        assert run_on_main(lambda: 41 + rank, dist) == 41  # rank 0's value everywhere

        def fail():
            raise DataError("rank 0 says no")
        with pytest.raises(DataError, match="rank 0 says no"):
            run_on_main(fail, dist)
        bn = nn.BatchNorm1d(3)
        bn.running_mean.fill_(float(rank))
        sync_buffers(bn, dist)
        assert bn.running_mean.tolist() == [0.0, 0.0, 0.0]
    finally:
        torch.distributed.destroy_process_group()


def test_helpers_in_two_ranks(tmp_path):
    mp.spawn(_helpers_worker, args=(str(tmp_path / "init"),), nprocs=WORLD, join=True)

# ----------------------------------------------------------------------------- torchrun end to end
# The runs are jobs (tests/e2e_ddp.py, run in the background once per session); the tests check what they left.


def _check(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _dumps(debug_dir, name):
    """{rank: {key: array}} of one debug record."""
    return {r: dict(np.load(debug_dir / f"{name}_rank{r}.npz")) for r in range(WORLD)
            if (debug_dir / f"{name}_rank{r}.npz").exists()}


def _assert_same_on_ranks(debug_dir, name):
    per_rank = _dumps(debug_dir, name)
    assert sorted(per_rank) == list(range(WORLD)), f"{name}: not every rank reported"
    for key, value in per_rank[0].items():
        assert np.array_equal(value, per_rank[1][key]), f"{name}/{key} differs between ranks"
    return per_rank[0]


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _written(debug_dir):
    """Files each rank reported writing (rank 0 only, if all is well)."""
    out = {}
    for r in range(WORLD):
        path = debug_dir / f"writes_rank{r}.txt"
        out[r] = path.read_text().split() if path.exists() else []
    return out


@pytest.fixture(scope="module")
def stage1(e2e):
    """Synthetic SYSU-MM01 and a stage-1 run under torchrun: paths of data, run dir, debug dir (the
    ``ddp_stage1`` job)."""
    out = e2e.get("ddp_stage1")
    _check(out.proc)
    return out


@needs("ddp_stage1")
def test_stage1_ranks_agree_and_rank0_writes(stage1):
    for name in ("stage1_intra_e1_labels", "stage1_joint_e1_labels", "stage1_intra_e1_epoch_end",
                 "stage1_joint_e1_epoch_end"):
        _assert_same_on_ranks(stage1.dbg, name)
    writes = _written(stage1.dbg)
    assert writes[1] == [] and sorted(os.path.relpath(p, stage1.run) for p in writes[0]) == \
        ["final.pth", "intra/last.pth", "joint/last.pth"]
    assert len(_metrics(stage1.run)) == 2  # one record per epoch, not one per rank
    assert (stage1.run / "log.txt").read_text().count("training images:") == 1


@needs("ddp_stage1", "ddp_resume")
def test_stage1_resume(stage1, e2e):
    """Both ranks resume from rank 0's checkpoints: the phases are complete, the export is redone."""
    output, dbg, proc = e2e.get("ddp_resume")
    _check(proc)
    first = np.load(stage1.run / "pseudo_labels.npz")
    again = np.load(output / "sysu" / "baseline" / "pseudo_labels.npz")
    for k in first.files:  # the saved state (rank 0's BatchNorm statistics included) is what every rank used
        assert np.array_equal(first[k], again[k]), k
    assert _written(dbg) == {0: [str(output / "sysu" / "baseline" / "final.pth")], 1: []}


@needs("ddp_stage1", "ddp_single")
def test_stage1_single_process_same_first_clustering(stage1, e2e):
    """The first clustering happens before any training step: identical in one and two processes."""
    output, dbg, proc = e2e.get("ddp_single")
    _check(proc)
    one = dict(np.load(dbg / "stage1_intra_e1_labels_rank0.npz"))
    two = _dumps(stage1.dbg, "stage1_intra_e1_labels")[0]
    for key in one:  # labels and memory initialisation
        assert np.array_equal(one[key], two[key]), key
    m1, m2 = _metrics(output / "sysu" / "baseline")[0], _metrics(stage1.run)[0]
    assert (m1["rgb_clusters"], m1["ir_clusters"]) == (m2["rgb_clusters"], m2["ir_clusters"])
    for key in ("loss_rgb", "loss_ir"):  # BatchNorm statistics and augmentation draws differ (README)
        assert abs(m1[key] - m2[key]) < 0.25 * m1[key], (key, m1[key], m2[key])


@needs("ddp_stage1", "ddp_stage2")
def test_stage2_ranks_agree_and_rank0_writes(stage1, e2e):
    dbg, output, proc = e2e.get("ddp_stage2")
    _check(proc)
    for name in ("stage2_labels", "stage2_e1_epoch_end", "stage2_e2_clean", "stage2_e2_epoch_end"):
        _assert_same_on_ranks(dbg, name)
    run = output / "sysu" / "mmm"
    assert _written(dbg) == {0: [str(run / "last.pth")] * 2, 1: []}
    records = _metrics(run)
    assert len(records) == 2
    assert all(np.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss_"))


@needs("ddp_controlled_1", "ddp_controlled_2")
def test_stage1_one_vs_two_processes_controlled(e2e):
    """Without per-rank BatchNorm statistics and random augmentation, two processes reproduce the
    single-process run (losses to float rounding, clusterings of both phases)."""
    records = {}
    for nproc in (1, WORLD):
        output, proc = e2e.get(f"ddp_controlled_{nproc}")  # tests/observed_run.py control_the_run
        _check(proc)
        records[nproc] = _metrics(output / "sysu" / "baseline")
    for one, two in zip(records[1], records[WORLD]):
        for key, value in one.items():
            if key.endswith(("clusters", "outliers")):
                assert value == two[key], (one["phase"], key)
            elif key.startswith("loss_"):
                assert abs(value - two[key]) < 1e-4 * abs(value), (one["phase"], key, value, two[key])
