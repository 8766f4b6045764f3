"""Model package: the two-stream AGW embedding network of MMM and how to build it with backbone weights."""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple
from urllib.error import URLError

import torch
from torchvision.models import resnet as tv_resnet

from .agw import ARCHS, EmbedNet, EmbedOutput, PretrainedWeightsError, param_groups_stage2

__all__ = ["ARCHS", "EmbedNet", "EmbedOutput", "PretrainedWeightsError", "build_model",
           "input_memory_format", "load_backbone_state", "param_groups_stage2", "to_channels_last"]

# The V1 weights are the original torchvision release (resnet50-19c8e357.pth for resnet50), the file
# the released MMM code loads.
_IMAGENET = {
    "resnet18": tv_resnet.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": tv_resnet.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": tv_resnet.ResNet50_Weights.IMAGENET1K_V1,
}
# Classic torchvision file names (the release loads resnet50-19c8e357.pth); same weights as V1.
_LEGACY_FILES = {"resnet18": "resnet18-5c106cde.pth", "resnet34": "resnet34-333f7ec4.pth",
                 "resnet50": "resnet50-19c8e357.pth"}
_CHECKPOINT_KEYS = ("state_dict", "model")


def _download_imagenet(arch: str) -> Dict[str, torch.Tensor]:
    """ImageNet state dict of ``arch`` through torchvision's cache/download (``~/.cache/torch/hub``)."""
    weights = _IMAGENET[arch]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (URLError, OSError, RuntimeError) as err:  # no network, bad cache file, hash mismatch
        raise PretrainedWeightsError(
            f"cannot download ImageNet weights for {arch} ({type(err).__name__}: {err}); "
            f"use --pretrained none or --pretrained /path/to/{_LEGACY_FILES[arch]}") from err


def _read_local(path: str) -> Dict[str, torch.Tensor]:
    """A torchvision-style ResNet state dict from ``path`` (plain, or under "state_dict"/"model").

    A ``module.`` prefix (DataParallel checkpoints) is stripped.
    """
    if not os.path.isfile(path):
        raise PretrainedWeightsError(
            f"pretrained weights file not found: {path!r} (use --pretrained imagenet, none or a "
            f"torchvision ResNet .pth file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any file can be given; whatever fails to load is reported
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise PretrainedWeightsError(f"cannot read pretrained weights {path!r} ({first}); give a torchvision "
                                     "ResNet state dict") from None
    for key in _CHECKPOINT_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise PretrainedWeightsError(
            f"{path!r} is not a ResNet state dict (expected tensors, or a dict with one of "
            f"{_CHECKPOINT_KEYS})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_backbone_state(arch: str, pretrained: str) -> Tuple[Optional[Dict[str, torch.Tensor]], str]:
    """Resolve ``pretrained`` to ``(state_dict or None, description)``.

    ``"imagenet"`` → torchvision ImageNet V1 weights (download or cache), ``"none"`` → ``None``
    (random init), anything else → local file path. Raises :class:`PretrainedWeightsError`.
    """
    if pretrained == "none":
        return None, "random init"
    if pretrained == "imagenet":
        return _download_imagenet(arch), f"ImageNet weights for {arch}"
    return _read_local(pretrained), f"weights file {pretrained!r}"


def build_model(arch: str = "resnet50", num_classes: int = 0, pretrained: str = "imagenet",
                non_local: bool = True, nl_inter_channels: Optional[int] = None) -> EmbedNet:
    """Build the MMM embedding network (method.md C).

    Args:
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (released: resnet50).
        num_classes: classifier size (0 = no classifier).
        pretrained: ``"imagenet"``, ``"none"`` (random) or a path to a torchvision ResNet state dict;
            the same weights (for ``"none"`` one random draw) initialise the RGB stem, the IR stem and
            the shared trunk.
        non_local: insert the non-local blocks.
        nl_inter_channels: non-local ``c'`` (``None`` = 1, as released).

    Raises:
        ValueError: unknown ``arch``.
        PretrainedWeightsError: weights unavailable or not matching ``arch``.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    state, source = load_backbone_state(arch, pretrained)
    return EmbedNet(arch=arch, num_classes=num_classes, non_local=non_local,
                    nl_inter_channels=nl_inter_channels, backbone_state=state, source=source)


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
