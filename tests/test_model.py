"""EmbedNet structure, outputs, parameter groups and backbone-weight loading (method.md C, F.4)."""
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from model import ARCHS, EmbedNet, EmbedOutput, PretrainedWeightsError, build_model
from model import param_groups_stage2
from model.layers import GeM, NonLocalBlock

H, W = 64, 32  # small inputs keep the resnet18 tests fast


def _images(n, seed=0, h=H, w=W):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))




@pytest.fixture(scope="module")
def net18():
    """Shared resnet18 with a 5-way classifier (building models dominates the test time)."""
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=5, pretrained="none")


@pytest.fixture(scope="module")
def bare18():
    """Shared resnet18 without classifier."""
    return build_model("resnet18", num_classes=0, pretrained="none")


# ---------------------------------------------------------------- layers

def test_gem_formula_and_p1_is_average():
    x = torch.rand(2, 3, 4, 5)
    expected = (x.pow(3).mean(dim=(2, 3)) + 1e-12).pow(1 / 3)
    torch.testing.assert_close(GeM()(x), expected)
    torch.testing.assert_close(GeM(p=1.0, eps=0.0)(x), x.mean(dim=(2, 3)))
    assert GeM()(torch.zeros(1, 2, 3, 3)).shape == (1, 2)


def test_non_local_identity_at_init_and_release_quirk():
    block = NonLocalBlock(16)
    assert block.inter_channels == 1 and block.theta.out_channels == 1
    assert block.theta.bias is not None and block.W[0].in_channels == 1
    x = torch.randn(2, 16, 6, 3)
    block.train()
    torch.testing.assert_close(block(x), x)
    # once the output BN is non-zero the block really mixes positions (affinity / M, no softmax)
    with torch.no_grad():
        block.W[1].weight.fill_(1.0)
    block.eval()
    theta = block.theta(x).flatten(2).transpose(1, 2)
    phi, g = block.phi(x).flatten(2), block.g(x).flatten(2).transpose(1, 2)
    y = (theta @ phi / 18) @ g
    expected = x + block.W(y.transpose(1, 2).reshape(2, 1, 6, 3))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert NonLocalBlock(16, inter_channels=8).g.out_channels == 8


# ---------------------------------------------------------------- structure

def test_unknown_arch_rejected():
    with pytest.raises(ValueError, match="arch"):
        build_model("resnet101", pretrained="none")


def test_non_local_positions_and_order(net18):
    assert net18.nl_positions == {"layer2": (0, 1), "layer3": (0, 1)}
    assert sum(isinstance(m, NonLocalBlock) for m in net18.modules()) == 4
    calls = []
    hooks = [m.register_forward_hook(lambda mod, i, o, tag=tag: calls.append(tag))
             for tag, m in [("b0", net18.layer2[0]), ("b1", net18.layer2[1]),
                            ("nl0", net18.non_local["layer2"][0]), ("nl1", net18.non_local["layer2"][1])]]
    net18.eval()
    with torch.no_grad():
        net18(_images(1))
    for hook in hooks:
        hook.remove()
    assert calls == ["b0", "nl0", "b1", "nl1"]
    r34 = build_model("resnet34", pretrained="none")
    assert r34.nl_positions == {"layer2": (2, 3), "layer3": (3, 4, 5)} and r34.dim == 512
    no_nl = build_model("resnet18", pretrained="none", non_local=False)
    assert no_nl.nl_positions == {} and not any(isinstance(m, NonLocalBlock) for m in no_nl.modules())


def test_no_unused_submodules_and_classifier_absent(bare18):
    net = bare18
    assert net.classifier is None and net.num_classes == 0
    keys = net.state_dict().keys()
    assert not any(k.startswith(("classifier", "fc", "rgb_stem.4", "ir_stem.4")) for k in keys)
    assert len(net.rgb_stem) == 4 and len(net.ir_stem) == 4
    net.train()
    out = net(_images(2), _images(2, 1))
    assert out.logits is None


def test_bn_neck_init_and_frozen_bias(net18):
    neck = net18.bottleneck
    assert not neck.bias.requires_grad and torch.all(neck.bias == 0)
    assert neck.weight.requires_grad
    weight = neck.weight.detach()
    assert abs(float(weight.mean()) - 1.0) < 0.01 and 0.005 < float(weight.std()) < 0.02
    assert net18.classifier.bias is None and float(net18.classifier.weight.detach().std()) < 0.002


# ---------------------------------------------------------------- forward

@pytest.mark.parametrize("mode", ["rgb", "ir", "both"])
def test_output_shapes_train_and_eval(net18, mode):
    rgb = _images(2, 1) if mode != "ir" else None
    ir = _images(3, 2) if mode != "rgb" else None
    n = (2 if rgb is not None else 0) + (3 if ir is not None else 0)
    net18.train()
    out = net18(rgb, ir)
    assert isinstance(out, EmbedOutput)
    assert out.pool.shape == (n, 512) and out.feat.shape == (n, 512) and out.logits.shape == (n, 5)
    net18.eval()
    with torch.no_grad():
        emb = net18(rgb, ir)
    assert emb.shape == (n, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(n))


def test_mixed_batch_is_rgb_first_and_needs_input(net18):
    rgb, ir = _images(2, 3), _images(2, 4)
    net18.eval()
    with torch.no_grad():
        mixed = net18(rgb, ir)
        separate = torch.cat([net18(rgb, None), net18(None, ir)])
    torch.testing.assert_close(mixed, separate, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        net18()


def test_layer4_stride_one_resnet18(net18):
    net18.eval()
    with torch.no_grad():
        fmap = net18.feature_map(_images(1))
    assert fmap.shape == (1, 512, H // 16, W // 16)


def test_resnet50_shapes_at_288x144():
    net = build_model("resnet50", num_classes=3, pretrained="none")
    assert net.dim == 2048 and net.nl_positions == {"layer2": (2, 3), "layer3": (3, 4, 5)}
    assert sum(isinstance(m, NonLocalBlock) for m in net.modules()) == 5
    net.eval()
    with torch.no_grad():
        fmap = net.feature_map(None, _images(1, h=288, w=144))
        emb = net.pool(fmap)
    assert fmap.shape == (1, 2048, 18, 9) and emb.shape == (1, 2048)


def test_every_parameter_gets_a_gradient(net18):
    net = net18
    net.zero_grad(set_to_none=True)
    net.train()
    out = net(_images(2, 5), _images(2, 6))
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])) + out.pool.sum() * 1e-3
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    net.zero_grad(set_to_none=True)
    assert not missing
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["bottleneck.bias"]


def test_embed_batch_flip_average_and_normalisation(net18):
    """utils.evaluation.features.embed_batch, the one flip descriptor: f(x), (f(x) + f(flip x)) / 2 and its
    normalisation, through the stem of the modality; eval mode and a known modality required."""
    from utils.evaluation.features import embed_batch

    x = _images(3, 7)
    net18.train()
    with pytest.raises(RuntimeError, match="eval"):
        embed_batch(net18, x, "rgb")
    net18.eval()
    with torch.no_grad():
        plain = embed_batch(net18, x, "ir")
        torch.testing.assert_close(plain, net18(None, x))
        flipped = net18(None, torch.flip(x, dims=[3]))
        mean = embed_batch(net18, x, "ir", flip=True, renormalize=False)
        renorm = embed_batch(net18, x, "ir", flip=True)
        rgb = embed_batch(net18, x, "rgb")
    torch.testing.assert_close(mean, (plain + flipped) / 2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(renorm, F.normalize(mean, dim=1))
    torch.testing.assert_close(renorm.norm(dim=1), torch.ones(3))
    assert not torch.allclose(rgb, plain)  # separate stems
    with pytest.raises(ValueError):
        embed_batch(net18, x, "thermal")


def test_reset_classifier():
    net = build_model("resnet18", num_classes=0, pretrained="none", non_local=False)
    net.reset_classifier(7)
    assert net.num_classes == 7 and net.classifier.weight.shape == (7, 512)
    net.train()
    assert net(_images(2)).logits.shape == (2, 7)
    net.reset_classifier(0)
    assert net.classifier is None


# ---------------------------------------------------------------- optimiser groups

def test_param_groups_stage2(net18, bare18):
    groups = param_groups_stage2(net18, lr=0.1)
    assert [g["name"] for g in groups] == ["backbone", "bottleneck", "classifier"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.1, 0.1])
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in net18.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) and set(ids) == set(trainable)
    assert groups[1]["params"] == [net18.bottleneck.weight]
    assert groups[2]["params"] == [net18.classifier.weight]
    torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    no_cls = param_groups_stage2(bare18, lr=0.1)
    assert no_cls[2]["params"] == []


# ---------------------------------------------------------------- backbone weights

def test_pretrained_from_local_file(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    state = reference.state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    net = build_model("resnet18", pretrained=str(path))
    for stem in (net.rgb_stem, net.ir_stem):
        torch.testing.assert_close(stem[0].weight, state["conv1.weight"])
        torch.testing.assert_close(stem[1].running_var, state["bn1.running_var"])
    torch.testing.assert_close(net.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(net.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    # checkpoint dict with a DataParallel prefix
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, wrapped)
    net2 = build_model("resnet18", pretrained=str(wrapped))
    torch.testing.assert_close(net2.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    with pytest.raises(PretrainedWeightsError, match="does not match resnet50"):
        build_model("resnet50", pretrained=str(path))


def test_random_init_shares_one_draw():
    """--pretrained none: both stems and the trunk come from one random ResNet, as with ImageNet weights."""
    torch.manual_seed(0)
    net = build_model("resnet18", pretrained="none")
    torch.testing.assert_close(net.rgb_stem[0].weight, net.ir_stem[0].weight)
    torch.testing.assert_close(net.rgb_stem[1].weight, net.ir_stem[1].weight)
    torch.manual_seed(1)
    other = build_model("resnet18", pretrained="none")
    assert not torch.equal(net.rgb_stem[0].weight, other.rgb_stem[0].weight)  # still random per seed
    assert not torch.equal(net.layer1[0].conv1.weight, other.layer1[0].conv1.weight)


def test_pretrained_missing_file(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(PretrainedWeightsError, match="not found"):
        build_model("resnet18", pretrained=missing)
    assert issubclass(PretrainedWeightsError, RuntimeError)


def test_pretrained_imagenet_without_network(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    # torchvision's WeightsEnum.get_state_dict looks this name up in its own module at call time
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError, match="--pretrained none") as info:
        build_model("resnet50", pretrained="imagenet")
    assert "resnet50-19c8e357.pth" in str(info.value)
    assert set(ARCHS) == {"resnet18", "resnet34", "resnet50", "mobilenet_v2"} and EmbedNet is not None
