"""Model package: the two-stream embedding networks of MMM (ResNet AGW, MobileNetV2) and how to build them
with backbone weights (model/weights.py)."""
from __future__ import annotations

from typing import Optional

import torch

from .agw import ARCHS as RESNET_ARCHS
from .agw import EmbedNet
from .mobilenet import MobileNetEmbedNet
from .two_stream import EmbedOutput, TwoStreamNet, param_groups_stage2
from .weights import PretrainedWeightsError, check_finite, load_backbone_state

__all__ = ["ARCHS", "EmbedNet", "EmbedOutput", "MobileNetEmbedNet", "PretrainedWeightsError", "TwoStreamNet",
           "build_model", "describe_weights", "input_memory_format", "load_backbone_state", "param_groups_stage2",
           "to_channels_last"]

ARCHS = (*RESNET_ARCHS, "mobilenet_v2")


def build_model(arch: str = "resnet50", num_classes: int = 0, pretrained: str = "imagenet",
                non_local: bool = True, nl_inter_channels: Optional[int] = None) -> TwoStreamNet:
    """Build the MMM embedding network (method.md C).

    Args:
        arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (released) or ``"mobilenet_v2"``.
        num_classes: classifier size (0 = no classifier).
        pretrained: ``"imagenet"``, ``"imagenet-offline"`` (mobilenet_v2), ``"none"`` (random) or a path to a
            torchvision state dict; the same weights (for ``"none"`` one random draw) initialise the RGB stem,
            the IR stem and the shared trunk. The net's ``pretrained_info`` says which weights were used.
        non_local: insert the non-local blocks (ResNet; mobilenet_v2 has none, see model/mobilenet.py).
        nl_inter_channels: non-local ``c'`` (``None`` = 1, as released).

    Raises:
        ValueError: unknown ``arch``.
        PretrainedWeightsError: weights unavailable, not finite, or not matching ``arch``.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
    state, info = load_backbone_state(arch, pretrained)
    if state is not None:
        check_finite(state, info)
    source = info.get("file") or info["source"]
    if arch == "mobilenet_v2":
        return MobileNetEmbedNet(num_classes=num_classes, backbone_state=state, source=source, pretrained_info=info)
    return EmbedNet(arch=arch, num_classes=num_classes, non_local=non_local, nl_inter_channels=nl_inter_channels,
                    backbone_state=state, source=source, pretrained_info=info)


def describe_weights(model: torch.nn.Module) -> str:
    """One line naming the initial weights of ``model`` (unwrapped): source, and sha256 when there is a file."""
    info = getattr(model, "pretrained_info", {}) or {}
    sha = f" (sha256 {info['sha256']})" if info.get("sha256") else ""
    return f"{info.get('source', 'unknown')}{sha}"


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Put every 4-D parameter and buffer of ``model`` in the channels_last (NHWC) memory format, in place.

    Convolutions then run NHWC kernels (tensor cores under autocast) without layout conversions, provided
    the input batches are channels_last too (see :func:`input_memory_format`). Values are unchanged.
    """
    return model.to(memory_format=torch.channels_last)


def input_memory_format(model: torch.nn.Module) -> torch.memory_format:
    """The memory format input batches should have for ``model`` (possibly wrapped in DataParallel/DDP):
    channels_last when its first convolution weight is stored that way, else contiguous."""
    for p in model.parameters():
        if p.dim() == 4:
            if p.shape[1] > 1 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
                return torch.channels_last
            return torch.contiguous_format
    return torch.contiguous_format
