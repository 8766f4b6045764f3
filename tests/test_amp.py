"""Mixed precision (--amp) and channels_last: the real stage-1/stage-2 step functions under bfloat16 autocast
give the float32 losses within a stated tolerance, float16 is refused on the CPU, the gradient scaler is
exact when nothing overflows, and the memory format reaches the inputs.

Tolerance: bfloat16 keeps 8 bits of mantissa (~3 significant digits); through a ResNet the network's outputs
move by about 1 %, so every loss must stay within 3 % (relative) of its float32 value. Measured here: at
most 0.8 % for the stage-1 memory losses and 0.5 % for the stage-2 terms.
"""
import copy

import pytest
import torch

from data.sample import DataError
from memory.cluster_memory import ClusterMemory
from model import build_model, input_memory_format, to_channels_last
from utils.train.stage1_steps import memory_step
from utils.device import amp_dtype, autocast, configure_backends, grad_scaler, optimizer_step
from utils.settings import LossSettings
from utils.train.stage2_steps import Stage2Batch, batch_losses, forward_batch

CPU = torch.device("cpu")
REL_TOL = 0.03
STAGE2_OPTS = LossSettings(id_loss="soft", margin=0.2, intra_weight=0.5, inter_weight=0.05, intra_loss="l1",
                           inter_start_epoch=0)


def _stage1_inputs(seed, device=CPU):
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=0, pretrained="none").to(device).train()
    gen = torch.Generator().manual_seed(seed)
    mem = ClusterMemory(model.dim, 8).to(device)
    mem.set_centroids(torch.randn(8, model.dim, generator=gen))
    va, vb, t = (torch.randn(8, 3, 32, 16, generator=gen) for _ in range(3))
    y = torch.randint(0, 8, (8,), generator=gen)
    return model, mem, ((va, vb), y), (t, y)


def _stage1_step(model, mem, rgb, ir, amp, device=CPU):
    """One real stage-1 step on copies: (losses as floats, updated model, updated memories)."""
    model, m_rgb, m_ir = copy.deepcopy(model), copy.deepcopy(mem), copy.deepcopy(mem)
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    dtype = amp_dtype(amp, device)  # --amp resolved once, as a run's context does
    losses = memory_step(model, rgb, ir, m_rgb, m_ir, device, amp=dtype)
    optimizer_step(sum(losses.values()), opt, grad_scaler(dtype, device))
    return {k: float(v.detach()) for k, v in losses.items()}, model, (m_rgb, m_ir)


@pytest.mark.parametrize("seed", [0, 1])
def test_stage1_bf16_step_matches_fp32(seed):
    model, mem, rgb, ir = _stage1_inputs(seed)
    ref, _, _ = _stage1_step(model, mem, rgb, ir, "off")
    low, trained, mems = _stage1_step(model, mem, rgb, ir, "bf16")
    for key, value in ref.items():
        assert abs(low[key] - value) <= REL_TOL * abs(value), (key, low[key], value)
    # The memories stay float32 unit rows (their update in backward saw float32 features) and the step trained.
    for m in mems:
        assert m.features.dtype == torch.float32
        assert torch.allclose(m.features.norm(dim=1), torch.ones(8), atol=1e-5)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trained.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), trained.parameters()))


def _stage2_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    y, idx = torch.arange(3).repeat_interleave(4), torch.arange(12)
    imgs = [torch.randn(12, 3, 32, 16, generator=gen) for _ in range(3)]
    batch = ((imgs[0], imgs[1]), y, y, idx, imgs[2], y, y, idx)
    probs = {k: torch.rand(12, generator=gen) for k in ("v1", "v2", "ir")}
    protos = {k: 0.1 * torch.randn(6, 512, generator=gen) for k in ("v1", "v2", "ir")}
    return batch, probs, protos


@pytest.mark.parametrize("seed", [0, 1])
def test_stage2_bf16_losses_match_fp32(seed):
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=6, pretrained="none").train()
    batch, probs, protos = _stage2_batch(seed)
    losses = {}
    for amp in ("off", "bf16"):
        m = copy.deepcopy(model)
        o = forward_batch(m, batch, CPU, amp_dtype(amp, CPU))
        assert isinstance(o, Stage2Batch)
        assert all(x.dtype == torch.float32 for x in (o.rgb1, o.rgb2, o.ir, o.logits))  # losses see float32
        out = batch_losses(o, probs, protos, STAGE2_OPTS, epoch=5)
        optimizer_step(sum(out.values()), torch.optim.SGD(m.parameters(), lr=0.01), None)
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
        losses[amp] = {k: float(v.detach()) for k, v in out.items()}
    assert set(losses["off"]) == {"id", "tri", "intra", "inter"}
    for key, value in losses["off"].items():
        assert abs(losses["bf16"][key] - value) <= REL_TOL * abs(value), (key, losses["bf16"][key], value)


def test_amp_values_and_fp16_refused_on_cpu():
    assert amp_dtype("off", CPU) is None and amp_dtype(False, CPU) is None and amp_dtype(None, CPU) is None
    assert amp_dtype("bf16", CPU) is torch.bfloat16
    assert amp_dtype(True, CPU) is torch.bfloat16  # a bare --amp on the CPU
    with pytest.raises(DataError, match="--amp fp16"):
        amp_dtype("fp16", CPU)
    with pytest.raises(DataError, match="--amp"):
        amp_dtype("fp8", CPU)
    with autocast(torch.bfloat16, CPU):
        assert (torch.randn(2, 3) @ torch.randn(3, 2)).dtype == torch.bfloat16
    with autocast(None, CPU):
        assert (torch.randn(2, 3) @ torch.randn(3, 2)).dtype == torch.float32
    assert grad_scaler(torch.bfloat16, CPU) is None and grad_scaler(None, CPU) is None


def test_configure_backends_leaves_a_cpu_run_alone(monkeypatch):
    before = torch.backends.cudnn.benchmark
    configure_backends(CPU)
    assert torch.backends.cudnn.benchmark == before


def test_fp16_on_cpu_is_refused_before_a_run_writes_anything(tiny_sysu, tmp_path, capsys):
    """--amp is resolved once, when the run's context is made: fp16 on a CPU stops there in one line."""
    from utils.cli import stage1_main, run_cli

    argv = ["--data-dir", str(tiny_sysu), "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--amp", "fp16",
            "--arch", "resnet18", "--pretrained", "none"]
    assert run_cli(lambda a: stage1_main("sysu", a), argv) == 2
    assert capsys.readouterr().err.startswith("error: --amp fp16 needs a GPU")
    assert not (tmp_path / "out").exists()


def test_gradient_scaler_step_is_exact_without_overflow():
    """optimizer_step through a GradScaler (power-of-two scale, unscaled before the step) updates the
    parameters exactly as the plain step does."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    nets = [copy.deepcopy(net) for _ in range(2)]
    for n, scaler in zip(nets, (None, torch.amp.GradScaler("cpu"))):
        opt = torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            optimizer_step(torch.nn.functional.cross_entropy(n(x), y), opt, scaler)
    for a, b in zip(*(n.parameters() for n in nets)):
        assert torch.equal(a, b)


def test_channels_last_model_and_inputs():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=0, pretrained="none").eval()
    assert input_memory_format(model) == torch.contiguous_format
    fast = to_channels_last(copy.deepcopy(model))
    assert input_memory_format(fast) == torch.channels_last
    assert input_memory_format(torch.nn.DataParallel(fast)) == torch.channels_last  # through a wrapper
    x = torch.randn(4, 3, 32, 16)
    with torch.no_grad():
        ref = model(x_rgb=x)
        out = fast(x_rgb=x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # The step functions hand a channels_last model channels_last batches.
    seen = []
    fast.rgb_stem.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].is_contiguous(
        memory_format=torch.channels_last)))
    fast.train()
    _, mem, rgb, ir = _stage1_inputs(0)
    memory_step(fast, rgb, ir, mem, copy.deepcopy(mem), CPU)
    assert seen == [True]


def test_bare_amp_flag_keeps_old_command_lines():
    from utils.args import stage2_parser, parse

    need = ["--dataset", "sysu", "--data-dir", "D", "--resume-net1", "c.pth"]
    assert parse(stage2_parser(), need + ["--amp"]).amp is True
    assert parse(stage2_parser(), need).amp == "off"
    assert parse(stage2_parser(), need + ["--amp", "fp16", "--channels-last"]).channels_last is True
    with pytest.raises(SystemExit):
        parse(stage2_parser(), need + ["--amp", "fp32"])


def test_replicas_autocast_to_the_callers_dtype_in_their_threads(monkeypatch):
    """DataParallel runs replicas in threads, where autocast state does not carry over: the wrapper enters the
    caller's dtype there (torch passes only 'enabled', which would mean float16)."""
    import threading

    from utils.device import AutocastDataParallel, in_autocast

    seen = {}
    probe = in_autocast(lambda: (torch.get_autocast_dtype("cpu"), torch.is_autocast_enabled("cpu")), "cpu",
                        torch.bfloat16)
    thread = threading.Thread(target=lambda: seen.setdefault("thread", probe()))
    thread.start()
    thread.join()
    assert seen["thread"] == (torch.bfloat16, True)
    # parallel_apply hands wrapped replicas to torch's when autocast is on, the replicas themselves otherwise.
    handed = []
    monkeypatch.setattr(torch.nn.DataParallel, "parallel_apply", lambda self, r, i, k: handed.append(r) or [])
    dp = AutocastDataParallel(torch.nn.Linear(2, 2))  # no GPU: DataParallel just holds the module
    replica = torch.nn.Linear(2, 2)
    dp.parallel_apply([replica], [()], None)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    dp.parallel_apply([replica], [()], None)
    assert handed[0] == [replica] and handed[1][0] is not replica and callable(handed[1][0])


# ------------------------------------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_steps(amp):
    dev = torch.device("cuda")
    configure_backends(dev)
    model, mem, rgb, ir = _stage1_inputs(0)
    ref, _, _ = _stage1_step(model.to(dev), mem.to(dev), rgb, ir, "off", dev)
    low, trained, _ = _stage1_step(to_channels_last(model.to(dev)), mem.to(dev), rgb, ir, amp, dev)
    for key, value in ref.items():
        assert abs(low[key] - value) <= REL_TOL * abs(value), (key, low[key], value)
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    torch.manual_seed(0)
    model2 = build_model("resnet18", num_classes=6, pretrained="none").to(dev).train()
    batch, probs, protos = _stage2_batch(0)
    probs, protos = ({k: v.to(dev) for k, v in d.items()} for d in (probs, protos))
    out = {a: batch_losses(forward_batch(copy.deepcopy(model2), batch, dev, amp_dtype(a, dev)), probs, protos,
                           STAGE2_OPTS, 5)
           for a in ("off", amp)}
    for key, value in out["off"].items():
        assert abs(float(out[amp][key]) - float(value)) <= REL_TOL * abs(float(value)), key
    assert amp_dtype(True, dev) in (torch.bfloat16, torch.float16)
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
