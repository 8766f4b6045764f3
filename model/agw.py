"""Two-stream AGW-style ResNet embedding network of MMM (method.md C).

Layout: a visible (RGB) stem and an infrared stem (conv1-bn1-relu-maxpool, from two separate ResNet
instances) feed one shared trunk (layer1..layer4 of a third instance, layer4 with stride 1, non-local
blocks in layer2/layer3), then GeM pooling, a BatchNorm1d "BN neck" and an optional bias-free
classifier.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from .layers import NonLocalBlock
from .two_stream import TwoStreamNet
from .weights import check_layout

ARCHS = {
    "resnet18": (tv_resnet.resnet18, 512),
    "resnet34": (tv_resnet.resnet34, 512),
    "resnet50": (tv_resnet.resnet50, 2048),
}
# Non-local blocks go after the last NL_COUNT[layer] blocks of that layer (method.md C: resnet50
# layer2 blocks 2,3 and layer3 blocks 3,4,5). Shallower layers get min(count, n_blocks).
NL_COUNT = {"layer2": 2, "layer3": 3}


def make_resnet(arch: str, state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                source: str = "state dict") -> tv_resnet.ResNet:
    """A torchvision ResNet of ``arch``, optionally loaded with a torchvision-style ``state_dict``.

    ``fc.*`` keys are ignored (the classifier head is discarded anyway) and missing
    ``num_batches_tracked`` buffers are tolerated (old checkpoints such as resnet50-19c8e357.pth lack
    them). Any other missing/unexpected key or shape mismatch raises :class:`PretrainedWeightsError`
    naming ``source``.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    net = ARCHS[arch][0](weights=None)
    if state_dict is None:
        return net
    state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.")}
    check_layout(state, expected, source, arch, optional=("num_batches_tracked",))
    net.load_state_dict(state, strict=False)
    return net


def stride_one(layer: nn.Sequential) -> None:
    """Set every stride-2 convolution of ``layer[0]`` (main path and downsample) to stride 1.

    Bottleneck (resnet50) strides its 3×3 conv2, BasicBlock (resnet18/34) its conv1; walking all
    convolutions of the first block covers both. Weights are unaffected (kernel shapes do not change).
    """
    for module in layer[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)


class EmbedNet(TwoStreamNet):
    """Two-stream ResNet with shared trunk, non-local blocks, GeM, BN neck and optional classifier.

    Args:
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        num_classes: classifier size; ``0`` means no classifier (stage 1, evaluation).
        non_local: insert the non-local blocks (released default ``on``).
        nl_inter_channels: ``c'`` of the non-local blocks; ``None`` = 1 (release quirk).
        backbone_state: torchvision ResNet state dict loaded into all three instances, or ``None``.
        source: description of ``backbone_state`` for error messages.
        pretrained_info: which weights ``backbone_state`` is (``{"source", "file", "sha256"}``), kept for the
            checkpoints.

    Attributes: those of :class:`TwoStreamNet`; ``dim`` is 2048 for resnet50, 512 otherwise, and
    ``nl_positions`` is ``{"layer2": (...), "layer3": (...)}``, 0-based block indices followed by a
    non-local block.
    """

    def __init__(self, arch: str = "resnet50", num_classes: int = 0, non_local: bool = True,
                 nl_inter_channels: Optional[int] = None,
                 backbone_state: Optional[Mapping[str, torch.Tensor]] = None,
                 source: str = "state dict", pretrained_info: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        if backbone_state is None:
            # Random weights, but one draw for all three copies: with ImageNet weights the two stems
            # start identical too, which is what lets early cross-modality clusters form.
            backbone_state = make_resnet(arch).state_dict()
        rgb, ir, shared = (make_resnet(arch, backbone_state, source) for _ in range(3))
        # Only the stems of instances 1 and 2 are kept: their layer1-4 and fc would never be used.
        self.rgb_stem = nn.Sequential(rgb.conv1, rgb.bn1, rgb.relu, rgb.maxpool)
        self.ir_stem = nn.Sequential(ir.conv1, ir.bn1, ir.relu, ir.maxpool)
        stride_one(shared.layer4)
        self.layer1, self.layer2 = shared.layer1, shared.layer2
        self.layer3, self.layer4 = shared.layer3, shared.layer4
        self.nl_positions: Dict[str, Sequence[int]] = {}
        self.non_local = nn.ModuleDict()
        if non_local:
            for name, count in NL_COUNT.items():
                layer = getattr(self, name)
                n_blocks = len(layer)
                self.nl_positions[name] = tuple(range(n_blocks - min(count, n_blocks), n_blocks))
                channels = _out_channels(layer)
                self.non_local[name] = nn.ModuleList(
                    NonLocalBlock(channels, nl_inter_channels) for _ in self.nl_positions[name])
        self.init_head(arch, ARCHS[arch][1], num_classes, pretrained_info)

    def _run_layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run trunk layer ``name``, applying a non-local block after each listed block index."""
        positions = self.nl_positions.get(name, ())
        for index, block in enumerate(getattr(self, name)):
            x = block(x)
            if index in positions:
                x = self.non_local[name][positions.index(index)](x)
        return x

    def run_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """layer1..layer4 (layer4 with stride 1) with the non-local blocks: ``(N, 64, H/4, W/4)`` →
        ``(N, dim, H/16, W/16)``."""
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = self._run_layer(name, x)
        return x


def _out_channels(layer: nn.Sequential) -> int:
    """Output channels of a torchvision ResNet layer (last BN of its last block)."""
    last = layer[-1]
    bn = last.bn3 if hasattr(last, "bn3") else last.bn2
    return bn.num_features
