"""The shared end of an epoch and resume (utils/train/epoch_end.py), when to evaluate
(utils/train/loop.py) and the observers (utils/train/callbacks.py), on a tiny stand-in network: best
tracking, weights-only best.pth, metrics lines, log lines, resume start epoch."""
import json
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from utils.distributed import DistInfo
from utils.settings import DataSettings
from utils.train.callbacks import Observers
from utils.train.epoch_end import EpochEnd, TrainState, finish_epoch, resume_from
from utils.train.loop import evaluation_due


class _Net(nn.Module):
    """What make_checkpoint reads: weights, a buffer, ``arch`` and ``num_classes``."""

    arch, num_classes = "tiny", 0

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, line):
        self.lines.append(line)


def _ctx(tmp_path, observers=()):
    data = DataSettings(dataset="sysu", data_dir="d", trial=None, cache_dir=None, workers=0, img_h=16, img_w=8)
    return SimpleNamespace(run_dir=str(tmp_path), device=torch.device("cpu"), dist=DistInfo(), logger=_Log(),
                           data=data, flags={"dataset": "sysu"}, observers=Observers(observers))


def _end(tmp_path, scores, **kw):
    """An EpochEnd whose evaluation returns the next of ``scores`` as the first protocol's r1."""
    it = iter(scores)
    opts = dict(stage="mmm", phase="train", folder=str(tmp_path), tag="mmm", select="r1", epochs=4,
                eval_step=1, evaluate=lambda: {"all": {"mean": {"r1": next(it), "mAP": 0.0}}},
                shown=("loss_",), lr_format=".4f", observed=("stage2", None))
    opts.update(kw)
    return EpochEnd(**opts)


def _metrics(tmp_path):
    with open(tmp_path / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _run_epochs(tmp_path, end, n, best=-1.0, model=None, optimizer=None, first=1, observers=()):
    model = model or _Net()
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx = _ctx(tmp_path, observers)
    for epoch in range(first, first + n):
        record = {"epoch": epoch, "lr": 0.01, "loss_id": 1.0 / epoch, "other": 7}
        state = TrainState(model, optimizer, protos={"v1": torch.ones(2, 2) * epoch})
        best = finish_epoch(end, state, record, best, lambda: 2.0, ctx)
    return best, ctx, model, optimizer


def test_best_is_tracked_and_best_pth_is_weights_only(tmp_path):
    best, ctx, model, _ = _run_epochs(tmp_path, _end(tmp_path, [10.0, 30.0, 20.0]), 3)
    assert best == 30.0
    last = torch.load(tmp_path / "last.pth", weights_only=False)
    best_ckpt = torch.load(tmp_path / "best.pth", weights_only=False)
    assert (last["epoch"], last["best_metric"], best_ckpt["epoch"]) == (3, 30.0, 2)  # 1-based epochs
    assert last["optimizer"] is not None and best_ckpt["optimizer"] is None and best_ckpt["scheduler"] is None
    assert torch.equal(best_ckpt["extra"]["prototypes"]["v1"], torch.full((2, 2), 2.0))  # extra kept in best.pth
    assert (last["stage"], last["phase"]) == ("mmm", "train")
    records = _metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["eval"]["all"]["r1"] for r in records] == [10.0, 30.0, 20.0]
    assert all(r["seconds"] == 2.0 for r in records)
    assert ctx.logger.lines[-2] == "[mmm 2/4] lr 0.0100 loss_id 0.500  2s  (best)"
    assert ctx.logger.lines[-1] == "[mmm 3/4] lr 0.0100 loss_id 0.333  2s"  # only the shown prefixes


def test_not_due_means_no_evaluation_and_no_best(tmp_path):
    calls = []
    end = _end(tmp_path, [], eval_step=2, evaluate=lambda: calls.append(1) or
               {"all": {"mean": {"r1": 5.0}}})
    best, _, _, _ = _run_epochs(tmp_path, end, 2)
    assert calls == [1] and best == 5.0
    records = _metrics(tmp_path)
    assert "eval" not in records[0] and records[1]["eval"] == {"all": {"r1": 5.0}}
    assert torch.load(tmp_path / "best.pth", weights_only=False)["epoch"] == 2


def test_selection_key_and_stage1_log_format(tmp_path):
    it = iter([{"all": {"mean": {"r1": 90.0, "mAP": 1.0}}}, {"all": {"mean": {"r1": 10.0, "mAP": 2.0}}}])
    end = _end(tmp_path, [], select="mAP", evaluate=lambda: next(it), tag="intra", lr_format=".2e",
               stage="baseline", phase="intra")
    best, ctx, _, _ = _run_epochs(tmp_path, end, 2)
    assert best == 2.0  # selected by mAP, not by Rank-1
    assert torch.load(tmp_path / "best.pth", weights_only=False)["epoch"] == 2
    assert ctx.logger.lines[-1] == "[intra 2/4] lr 1.00e-02 loss_id 0.500  2s  (best)"


def test_evaluation_due():
    assert [e for e in range(1, 8) if evaluation_due(e, 3, 7)] == [3, 6, 7]
    assert not any(evaluation_due(e, 0, 7) for e in range(1, 8))
    # stage 2, as released: never after the first epoch unless it is the last one
    assert [e for e in range(1, 6) if evaluation_due(e, 1, 5, first=False)] == [2, 3, 4, 5]
    assert [e for e in range(1, 8) if evaluation_due(e, 3, 7, first=False)] == [3, 6, 7]
    assert evaluation_due(1, 1, 1, first=False) and not evaluation_due(1, 0, 1, first=False)


def test_resume_restores_state_and_starts_after_the_last_complete_epoch(tmp_path):
    _, _, model, optimizer = _run_epochs(tmp_path, _end(tmp_path, [10.0, 5.0]), 2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n")  # killed between the checkpoint and the metrics line
    fresh = _Net()
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    ctx = _ctx(tmp_path)
    ckpt = torch.load(tmp_path / "last.pth", weights_only=False)
    start, best = resume_from(ckpt, str(tmp_path / "last.pth"), TrainState(fresh, opt), ctx)
    assert (start, best) == (2, 10.0)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert opt.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    assert [r["epoch"] for r in _metrics(tmp_path)] == [1, 2]  # the missing line is restored
    assert ctx.logger.lines == [f"resumed from {tmp_path / 'last.pth'}: epoch 2 was complete, continuing with epoch 3"]


def test_resume_restores_the_scheduler_and_names_the_phase(tmp_path):
    model = _Net()
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    end = _end(tmp_path, [1.0], stage="baseline", phase="intra")
    opt.step()
    sched.step()
    finish_epoch(end, TrainState(model, opt, sched), {"epoch": 1, "lr": 1.0}, -1.0, lambda: 0.0, _ctx(tmp_path))
    opt2 = torch.optim.Adam(_Net().parameters(), lr=1.0)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.1)
    ctx = _ctx(tmp_path)
    ckpt = torch.load(tmp_path / "last.pth", weights_only=False)
    resume_from(ckpt, "X", TrainState(_Net(), opt2, sched2), ctx, what="intra phase ")
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == pytest.approx(0.1)
    assert ctx.logger.lines == ["resumed intra phase from X: epoch 1 was complete, continuing with epoch 2"]


def test_observers_hear_epoch_end_and_checkpoints_and_are_empty_by_default(tmp_path):
    assert not Observers()  # nothing is watching unless a caller passes an observer
    heard = []

    def observer(event, **info):
        heard.append((event, info.get("epoch"), info.get("path"), info["values"]() if "values" in info else None))

    _run_epochs(tmp_path, _end(tmp_path, [1.0]), 1, observers=[observer])
    assert [h[0] for h in heard] == ["epoch_end", "checkpoint", "checkpoint"]
    assert heard[0][1] == 1 and set(heard[0][3]) == {"params", "buffers", "v1"}  # the digest and the prototypes
    assert [os.path.basename(h[2]) for h in heard[1:]] == ["last.pth", "best.pth"]


def test_observers_registry_order():
    reg, calls = Observers(), []
    reg.add(lambda event, **info: calls.append(("a", event, info)))
    reg.add(lambda event, **info: calls.append(("b", event, info)))
    reg.notify("x", rank=0)
    assert calls == [("a", "x", {"rank": 0}), ("b", "x", {"rank": 0})]


@pytest.mark.parametrize("epoch, step, epochs, due", [
    (1, 1, 5, False), (2, 1, 5, True), (5, 1, 5, True), (1, 1, 1, True),  # first epoch only when it is the last
    (2, 2, 5, True), (3, 2, 5, False), (5, 2, 5, True), (3, 0, 3, False)])
def test_stage2_skips_evaluating_the_first_epoch(epoch, step, epochs, due):
    assert evaluation_due(epoch, step, epochs, first=False) is due
