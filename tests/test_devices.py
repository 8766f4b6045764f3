"""The CUDA and multi-GPU paths, tested on the CPU where their mechanism can be (issue 20): the GPUs that
``--device cuda:N`` uses, DataParallel's chunking of the visible/infrared halves, the torch floor against the
APIs used, the float16 range of the non-local blocks, the deterministic scatter of repeated indices, exact
float32 in MMLM, and the faiss backend's shared GPU resources and near-tie re-ranking."""
import contextlib
import re
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

import utils.device as device
from data.sample import DataError
from utils.train.stage2_steps import scatter_last_

ROOT_REQUIREMENTS = "requirements.txt"


# ------------------------------------------------------------------------------------ --device cuda:N
def test_parallel_device_ids_start_at_the_chosen_gpu():
    assert device.parallel_device_ids(None, 4) == [0, 1, 2, 3]
    assert device.parallel_device_ids(0, 4) == [0, 1, 2, 3]
    assert device.parallel_device_ids(2, 4) == [2, 3]
    assert device.parallel_device_ids(3, 4) == [3]
    with pytest.raises(DataError, match=r"--device cuda:4 does not exist: 4 GPU\(s\) are visible"):
        device.parallel_device_ids(4, 4)


def test_data_parallel_is_built_on_the_chosen_gpus(monkeypatch):
    made = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(device, "AutocastDataParallel", lambda model, device_ids: made.append(device_ids) or "dp")
    model = nn.Linear(2, 2)
    assert device.maybe_data_parallel(model, torch.device("cuda", 1)) == "dp" and made == [[1, 2, 3]]
    assert device.maybe_data_parallel(model, torch.device("cuda")) == "dp" and made[-1] == [0, 1, 2, 3]
    assert device.maybe_data_parallel(model, torch.device("cuda", 3)) is model  # one GPU left: no wrapper
    assert device.maybe_data_parallel(model, torch.device("cuda", 1), distributed=True) is model
    assert device.maybe_data_parallel(model, torch.device("cpu")) is model


def test_cuda_n_becomes_the_current_device(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    tf32 = torch.backends.cuda.matmul.allow_tf32  # a cuBLASModule attribute: restored by hand
    try:
        device.configure_backends(torch.device("cuda", 2))
        device.configure_backends(torch.device("cuda"))  # no index: the current device stays
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert chosen == [torch.device("cuda", 2)]


# ------------------------------------------------------------------------------- DataParallel chunks
class _FakeDP(nn.DataParallel):
    def __init__(self, gpus):  # no GPU needed: only device_ids is read
        nn.Module.__init__(self)
        self.device_ids = list(range(gpus))


@pytest.mark.parametrize("gpus", range(1, 9))
def test_replicas_get_both_halves_and_rows_come_back_in_order(gpus):
    for b in (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128):
        r = device.replica_count((2 * b, b), gpus)
        rgb, ir = torch.arange(2 * b).chunk(r), (torch.arange(b) + 2 * b).chunk(r)
        assert len(rgb) == len(ir) == r, (b, gpus)  # torch zips the pieces: none may be left over
        gathered = torch.cat([part for pair in zip(rgb, ir) for part in pair])  # [rgb_i; ir_i] per replica
        assert torch.equal(gathered[device.replica_order(2 * b, b, _FakeDP(gpus))], torch.arange(3 * b))
        for more in range(r + 1, gpus + 1):  # no larger replica count would have worked
            assert len(torch.arange(2 * b).chunk(more)) != more or len(torch.arange(b).chunk(more)) != more


def test_replica_count_known_answers():
    # B = 16 (the batch of scripts/gpu_check.sh): 32 views and 16 images; torch would cut 5 and 4 pieces on 5 GPUs.
    assert [device.replica_count((32, 16), g) for g in range(1, 9)] == [1, 2, 3, 4, 4, 6, 6, 8]
    assert device.replica_count((256, 128), 3) == 3 and device.replica_count((5,), 4) == 3


def test_scatter_uses_the_replicas_that_split_both_inputs(monkeypatch):
    seen = []
    monkeypatch.setattr(nn.DataParallel, "scatter", lambda self, inputs, kwargs, ids: seen.append(list(ids)))
    dp = device.AutocastDataParallel(nn.Linear(3, 3))
    dp.scatter((), {"x_rgb": torch.zeros(32, 3), "x_ir": torch.zeros(16, 3)}, list(range(5)))
    dp.scatter((), {"x_rgb": torch.zeros(32, 3), "x_ir": torch.zeros(16, 3)}, list(range(8)))
    assert seen == [[0, 1, 2, 3], list(range(8))]


# ------------------------------------------------------------------------------------------ torch floor
#: torch APIs the code calls that are newer than torch 2.0, with the first release that has them, a probe
#: that they exist here, and where they are called.
NEW_TORCH_APIS = {
    "torch.amp.GradScaler(device)": ("2.3", lambda: torch.amp.GradScaler, "utils/device.py"),
    "torch.is_autocast_enabled(device_type)": ("2.4", lambda: _has_param(torch.is_autocast_enabled, "device_type"),
                                               "utils/device.py"),
    "torch.get_autocast_dtype(device_type)": ("2.4", lambda: torch.get_autocast_dtype, "utils/device.py"),
    "torch.cuda.is_bf16_supported(including_emulation=...)": (
        "2.3", lambda: _has_param(torch.cuda.is_bf16_supported, "including_emulation"), "utils/device.py"),
    "Tensor.scatter_reduce(reduce='amin'/'amax')": ("2.0", lambda: torch.Tensor.scatter_reduce_,
                                                    "memory/cluster_memory.py"),
}


def _has_param(fn, name):
    import inspect
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: call it with the keyword
        fn(**{name: "cpu"} if name == "device_type" else {name: False})
        return True


def _version(text):
    return tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", text).groups())


def test_torch_floor_covers_every_api_used(repo_root):
    import os
    reqs = open(os.path.join(repo_root, ROOT_REQUIREMENTS)).read()
    floor = _version(re.search(r"^torch>=([\d.]+)", reqs, re.M).group(1))
    vision = _version(re.search(r"^torchvision>=([\d.]+)", reqs, re.M).group(1))
    for api, (first, probe, where) in NEW_TORCH_APIS.items():
        assert probe(), api  # the table names a real API of this torch
        assert api.split("(")[0].split(".")[-1] in open(os.path.join(repo_root, where)).read(), (api, where)
        assert floor >= _version(first), f"requirements.txt allows torch {floor}, but {api} needs {first}"
    assert vision == (0, floor[1] + 15), "torchvision 0.(N+15) is the release that pairs with torch 2.N"


# --------------------------------------------------------------------------- non-local float16 range
def test_non_local_intermediates_stay_in_float16_range_and_equal_the_old_formula():
    """Random-init ResNet-50 at 288x144 in eval mode (as the issue measured): every product the blocks form
    stays far below float16's maximum (65,504), a float16 block gives its float64 output, and the released
    order equals the previous association θ·(φ·g)/M up to rounding."""
    from model import build_model
    from model.layers import NonLocalBlock

    torch.manual_seed(0)
    net = build_model("resnet50", num_classes=0, pretrained="none").eval()
    blocks = [m for m in net.modules() if isinstance(m, NonLocalBlock)]
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0].detach()))) for b in blocks]
    x = torch.randn(2, 3, 288, 144, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net(x_rgb=x[:1], x_ir=x[1:])
    for h in hooks:
        h.remove()
    assert len(inputs) == len(blocks) == 5
    largest, old_largest = 0.0, 0.0
    real_bmm = torch.bmm

    def bmm(a, b):
        nonlocal largest
        out = real_bmm(a, b)
        largest = max(largest, float(out.abs().max()))
        return out

    for block, feats in inputs:
        b64, f64 = block.double(), feats.double()
        with torch.no_grad():
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(torch, "bmm", bmm)
                want = b64(f64)
            theta = b64.theta(f64).flatten(2).transpose(1, 2)
            phi, g = b64.phi(f64).flatten(2), b64.g(f64).flatten(2).transpose(1, 2)
            old_inner = real_bmm(phi, g)  # (N, c', c'): a sum over all M positions
            old_largest = max(old_largest, float(old_inner.abs().max()))
            m = f64.shape[2] * f64.shape[3]
            y_old = real_bmm(theta, old_inner) / m
            old = f64 + b64.W(y_old.transpose(1, 2).reshape(f64.shape[0], -1, *f64.shape[2:]))
            torch.testing.assert_close(want, old, rtol=1e-10, atol=1e-10)
            half = block.float().half()(feats.half()).double()
        assert torch.isfinite(half).all()
        torch.testing.assert_close(half, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
        block.float()
    assert largest < 65504 / 8, largest  # measured 4.1e3: eightfold headroom for trained weights
    assert old_largest > 4 * largest  # the previous order's sum over positions (3.5e4 here) was the risk


# ------------------------------------------------------------------------- deterministic last write
def test_scatter_last_keeps_the_last_occurrence_of_each_index():
    target = torch.full((6,), -1.0)
    index = torch.tensor([4, 1, 4, 0, 1, 4])
    values = torch.tensor([10.0, 11.0, 12.0, 13.0, 14.0, 15.0])
    assert scatter_last_(target, index, values) is target
    assert target.tolist() == [13.0, 14.0, -1.0, -1.0, 15.0, -1.0]
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # against the sequential loop, on many repeats
        idx = torch.randint(0, 50, (200,), generator=gen)
        val = torch.randn(200, generator=gen)
        want = torch.zeros(50)
        for i, v in zip(idx.tolist(), val.tolist()):
            want[i] = v
        assert torch.equal(scatter_last_(torch.zeros(50), idx, val), want)
    assert torch.equal(scatter_last_(torch.ones(3), torch.zeros(0, dtype=torch.long), torch.zeros(0)), torch.ones(3))


# ---------------------------------------------------------------------------- exact float32 in MMLM
def test_mmlm_products_run_inside_exact_float32(monkeypatch):
    import clustering.kmeans as kmeans
    import clustering.matching as matching
    from clustering.mmlm import MatchOptions, multi_memory_matching

    state = {"inside": False, "devices": [], "checked": []}

    @contextlib.contextmanager
    def recorder(dev):
        state["devices"].append(dev)
        state["inside"] = True
        try:
            yield
        finally:
            state["inside"] = False

    def checked(name, fn):
        def run(*args, **kwargs):
            state["checked"].append((name, state["inside"]))
            return fn(*args, **kwargs)
        return run

    for module in (kmeans, matching):
        monkeypatch.setattr(module, "exact_float32", recorder)
    monkeypatch.setattr(kmeans, "_kmeans_bucket", checked("kmeans", kmeans._kmeans_bucket))
    monkeypatch.setattr(matching.torch, "cdist", checked("cdist", torch.cdist))
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 8, generator=gen)
    labels = np.repeat(np.arange(4), 10)
    multi_memory_matching(feats, labels, feats + 0.01, labels, MatchOptions(num_memories=2, n_init=2))
    assert {name for name, _ in state["checked"]} == {"kmeans", "cdist"}
    assert all(inside for _, inside in state["checked"]) and set(state["devices"]) == {torch.device("cpu")}


# --------------------------------------------------------------------------------------- faiss backend
class _FakeIndex:
    """An exact flat L2 index that returns tied neighbours in DEcreasing index order (faiss's order is its
    own; the torch backend's is increasing), with float64 distances rounded to float32."""

    def __init__(self, *args):
        self.x = None

    def add(self, x):
        self.x = x.astype(np.float64)

    def search(self, q, k):
        d = ((q[:, None, :].astype(np.float64) - self.x[None]) ** 2).sum(-1)
        order = np.lexsort((-np.arange(len(self.x))[None].repeat(len(q), 0), d), axis=-1)[:, :k]
        return np.take_along_axis(d, order, 1).astype(np.float32), order


def _fake_faiss():
    made = []
    fake = types.ModuleType("faiss")  # faiss-gpu's names; a module, as the real one (hashable)
    fake.__dict__.update(IndexFlatL2=_FakeIndex, GpuIndexFlatL2=_FakeIndex, get_num_gpus=lambda: 1,
                         GpuIndexFlatConfig=types.SimpleNamespace,
                         StandardGpuResources=lambda: made.append(1) or object())
    return fake, made


def test_faiss_gpu_resources_are_made_once(monkeypatch):
    from clustering import knn_faiss

    fake, made = _fake_faiss()
    try:
        first = knn_faiss.faiss_index(fake, 8, torch.device("cuda", 1))
        second = knn_faiss.faiss_index(fake, 16, torch.device("cuda", 0))
        assert len(made) == 1 and first[1] is second[1]
    finally:
        knn_faiss.gpu_resources.cache_clear()


def test_faiss_table_equals_the_torch_table_on_exact_duplicates(monkeypatch):
    from clustering.knn import knn_search

    fake, _ = _fake_faiss()
    monkeypatch.setitem(sys.modules, "faiss", fake)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(30, 16, generator=gen)
    x = torch.cat([base, base, base[:10]])  # every point has exact duplicates: ties everywhere
    idx_t, d_t = knn_search(x, 7)
    idx_f, d_f = knn_search(x, 7, knn="faiss")
    np.testing.assert_array_equal(idx_f, idx_t)  # ties by index, as the torch backend breaks them
    np.testing.assert_allclose(d_f, d_t, rtol=1e-5, atol=1e-5)


def test_stage2_wrap_skips_data_parallel(monkeypatch):
    """Several visible GPUs without torchrun: stage 1 wraps in DataParallel (as released), stage 2
    (data_parallel=False) trains the plain model on one GPU (as released)."""
    import torch
    from utils.distributed import DistInfo, wrap_model

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    model = torch.nn.Linear(2, 2)
    cuda = torch.device("cuda")
    assert isinstance(wrap_model(model, DistInfo(), cuda), torch.nn.DataParallel)
    assert wrap_model(model, DistInfo(), cuda, data_parallel=False) is model
