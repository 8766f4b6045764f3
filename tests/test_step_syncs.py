"""Host syncs and divergence in the real training steps (issue 20), on the CPU (scripts/gpu_check.sh:
tests/test_gpu_check.py).

Syncs: the steps run with the model, the memories and the optimizer on PyTorch's "meta" device, which holds
no data, with the loader's batches on the CPU as a GPU run has them. Any read of a device value by the host
(``.item()``, ``bool()``, ``.tolist()``, ``.cpu()``, ``torch.nonzero``, ``torch.unique``, boolean-mask
indexing, ``bincount`` ...) raises on meta tensors, exactly where it would make a GPU run wait; the one read
a step makes on purpose (``all_ranks_true``, in utils/train/loop.py ``checked_step``) is counted instead, and every host-to-device copy must be
non_blocking (a blocking copy waits for the GPU's whole stream).
"""
from types import SimpleNamespace

import pytest

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import memory.cluster_memory as cm
import typed_settings
from memory.cluster_memory import ClusterMemory
from model import build_model
from utils.cli import run_cli
from utils.train import loop, stage1, stage2
from utils.train.divergence import DivergenceError, divergence_error
from utils.train.epoch_end import TrainState
from utils.train.loop import add_losses, fetch_sums

META = torch.device("meta")
STAGE2 = typed_settings.stage2("--inter-start-epoch", "0")  # the loss terms' released defaults


class BlockingCopies(TorchDispatchMode):
    """Records every copy between devices that is not non_blocking."""

    def __init__(self):
        super().__init__()
        self.blocking = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("device") is not None:
            if torch.device(kwargs["device"]).type != args[0].device.type and not kwargs.get("non_blocking"):
                self.blocking.append(f"{args[0].device} -> {kwargs['device']}")
        if func is torch.ops.aten.copy_.default and args[0].device.type != args[1].device.type:
            if not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False)):
                self.blocking.append(f"{args[1].device} -> {args[0].device}")
        return func(*args, **kwargs)


@pytest.fixture
def finite_checks(monkeypatch):
    """Counts the steps' finiteness checks (the one host read a step makes); the loss must be a device scalar."""
    calls = []

    def check(flag, dist):
        assert flag.device == META and flag.dim() == 0
        calls.append(1)
        return True
    monkeypatch.setattr(loop, "all_ranks_true", check)
    return calls


def _ctx(device, run_dir=".", amp=None):
    return typed_settings.context(device=str(device), amp=amp, run_dir=str(run_dir))


def _stage1_step(model, optimizer, batches, memories, ctx, diverged=None):
    """The step stage 1 makes per iteration (utils/train/stage1.epoch_steps), over the given batches."""
    loaders = {"rgb": [b[0] for b in batches], "ir": [b[1] for b in batches]}
    return stage1.epoch_steps(TrainState(model, optimizer), loaders, memories, ctx, None,
                              diverged or (lambda: DivergenceError("diverged")))


def _stage1_batches(b=4):
    gen = torch.Generator().manual_seed(0)
    views = tuple(torch.randn(b, 3, 32, 16, generator=gen) for _ in range(2))
    y = torch.tensor([0, 1, 0, 2])[:b]
    return (views, y, y, torch.arange(b)), (torch.randn(b, 3, 32, 16, generator=gen), y, y, torch.arange(b))


@pytest.mark.parametrize("use_hard, joint", [(False, False), (False, True), (True, False)])
def test_stage1_step_reads_the_device_once(finite_checks, monkeypatch, use_hard, joint):
    schedules = []
    real = cm.sequential_update_
    monkeypatch.setattr(cm, "sequential_update_", lambda *a: schedules.append(a[4] is not None) or real(*a))
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=0, pretrained="none").to(META).train()
    mems = [ClusterMemory(model.dim, 5, use_hard=use_hard).to(META) for _ in range(2)]
    m_rgb, m_ir = (mems[0], mems[0]) if joint else mems
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    step = _stage1_step(model, optimizer, [_stage1_batches()] * 2, {"rgb": m_rgb, "ir": m_ir}, _ctx(META))
    with BlockingCopies() as copies:
        for it in range(2):
            losses = step(it)
    assert finite_checks == [1, 1] and copies.blocking == []
    assert set(losses) == {"loss_rgb", "loss_ir"} and all(v.device == META for v in losses.values())
    # The sequential update ran in backward with the schedule read from the CPU labels in forward.
    assert schedules == ([] if use_hard else [True] * 4)


def _stage2_batch():
    gen = torch.Generator().manual_seed(1)
    y, idx = torch.arange(3).repeat_interleave(4), torch.arange(12)
    imgs = [torch.randn(12, 3, 32, 16, generator=gen) for _ in range(3)]
    return ((imgs[0], imgs[1]), y, y, idx, imgs[2], y, y, idx)


@pytest.mark.parametrize("warm", [True, False])
def test_stage2_step_reads_the_device_once(finite_checks, warm):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=6, pretrained="none").to(META).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    probs = None if warm else {k: torch.empty(12, device=META) for k in ("v1", "v2", "ir")}
    protos = {k: torch.empty(6, model.dim, device=META) for k in ("v1", "v2", "ir")}
    step = stage2.batch_step(TrainState(model, optimizer, protos=protos), probs, STAGE2, _ctx(META), epoch=5)
    with BlockingCopies() as copies:
        for _ in range(2):
            losses = step(_stage2_batch())
    assert finite_checks == [1, 1] and copies.blocking == []
    assert set(losses) == ({"id"} if warm else {"id", "tri", "intra", "inter"})


def test_clean_probability_losses_are_written_without_host_reads():
    from utils.train.stage2_steps import scatter_last_

    target = torch.empty(10, device=META)
    scatter_last_(target, torch.tensor([1, 1, 3]).to(META), torch.empty(3, device=META))  # raises if it syncs


def test_logged_sums_equal_python_float_sums_and_are_read_once():
    gen = torch.Generator().manual_seed(0)
    steps = [{"a": torch.rand((), generator=gen) * 3, "b": torch.rand((), generator=gen)} for _ in range(50)]
    sums, want = {}, {}
    for losses in steps:
        add_losses(sums, {"joint_" + k: v for k, v in losses.items()})
        for k, v in losses.items():
            want["joint_" + k] = want.get("joint_" + k, 0.0) + float(v)
    assert fetch_sums(sums) == want and fetch_sums({}) == {}  # bit-identical to summing float(v)


# ------------------------------------------------------------------------------------------ divergence
class _Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3, bias=False)

    def forward(self, x_rgb, x_ir):
        return SimpleNamespace(feat=self.fc(torch.cat([x_rgb, x_ir]).flatten(1)))


def test_stage1_divergence_stops_before_the_step_with_one_line(tmp_path, capsys):
    model = _Flat()
    before = model.fc.weight.detach().clone()
    mem = ClusterMemory(3, 4)
    mem.features.fill_(float("nan"))
    rgb = ((torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)), torch.tensor([0, 1]))
    ir = (torch.randn(2, 2, 2, 2), torch.tensor([1, 0]))
    ctx = _ctx(torch.device("cpu"), tmp_path)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    step = _stage1_step(model, optimizer, [(rgb, ir)], {"rgb": mem, "ir": mem}, ctx,
                        stage1.diverged_in("joint", 2, 40, ctx))
    with pytest.raises(DivergenceError) as err:
        step(0)
    assert torch.equal(model.fc.weight, before)  # no step was taken with the NaN gradient
    assert str(err.value) == ("the loss became NaN or inf in stage 1, joint phase, epoch 3/40; no checkpoint exists "
                              "yet: start again with lower --lr (e.g. halve it)")
    (tmp_path / "intra").mkdir()
    (tmp_path / "intra" / "last.pth").write_bytes(b"")
    message = str(stage1.diverged_in("joint", 2, 40, _ctx(torch.device("cpu"), tmp_path, amp=torch.bfloat16))())
    assert message == (f"the loss became NaN or inf in stage 1, joint phase, epoch 3/40; the last checkpoint is "
                       f"{tmp_path / 'intra' / 'last.pth'}: continue from it with --resume and lower --lr (e.g. "
                       "halve it) or use --amp off")
    assert run_cli(lambda argv: (_ for _ in ()).throw(err.value)) == 2  # one line on stderr, exit code 2
    assert capsys.readouterr().err == f"error: {err.value}\n"


def test_stage2_divergence_names_the_epoch_and_its_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "last.pth").write_bytes(b"")
    monkeypatch.setattr(stage2, "full_pass", lambda *a: [0])
    monkeypatch.setattr(stage2, "loader", lambda *a: ["batch"])
    monkeypatch.setattr(stage2, "forward_batch", lambda *a: None)
    monkeypatch.setattr(stage2, "gather_outputs", lambda o, dist: SimpleNamespace(
        logits=torch.zeros(1, 2), logit_labels=lambda: torch.zeros(1, dtype=torch.long)))
    # as a NaN loss does: the step raises the error the stage made for it
    monkeypatch.setattr(stage2, "checked_step", lambda losses, opt, ctx, diverged, *a: (_ for _ in ()).throw(diverged()))
    settings = typed_settings.stage2("--warm-epochs", "5", "--epochs", "100", "--print-freq", "10")
    with pytest.raises(DivergenceError) as err:  # the error the step raises for a NaN loss
        stage2.train_pass(TrainState(_Flat(), None), None, None, None, settings, _ctx(torch.device("cpu"), tmp_path),
                          epoch=0)
    assert str(err.value) == (f"the loss became NaN or inf in stage 2, epoch 1/100; the last checkpoint is "
                              f"{tmp_path / 'last.pth'}: continue from it with --resume and lower --lr (e.g. halve it)")
    assert str(err.value).split(" in stage ")[0] == str(divergence_error("x", [])).split(" in x")[0]


def test_stage2_step_raises_before_the_step_on_a_nan_loss():
    model = build_model("resnet18", num_classes=6, pretrained="none").train()
    before = [p.detach().clone() for p in model.parameters()]
    probs = {k: torch.full((12,), float("nan")) for k in ("v1", "v2", "ir")}
    protos = {k: torch.zeros(6, model.dim) for k in ("v1", "v2", "ir")}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = stage2.batch_step(TrainState(model, optimizer, protos=protos), probs, STAGE2, _ctx(torch.device("cpu")),
                             epoch=5)
    with pytest.raises(DivergenceError, match="the loss became NaN or inf"):
        step(_stage2_batch())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------------------------------- scripts/gpu_check.sh
