"""Two-stream AGW-style ResNet embedding network of MMM (method.md C) and its stage-2 parameter groups.

Layout: a visible (RGB) stem and an infrared stem (conv1-bn1-relu-maxpool, from two separate ResNet
instances) feed one shared trunk (layer1..layer4 of a third instance, layer4 with stride 1, non-local
blocks in layer2/layer3), then GeM pooling, a BatchNorm1d "BN neck" and an optional bias-free
classifier.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet

from .layers import GeM, NonLocalBlock

ARCHS = {
    "resnet18": (tv_resnet.resnet18, 512),
    "resnet34": (tv_resnet.resnet34, 512),
    "resnet50": (tv_resnet.resnet50, 2048),
}
# Non-local blocks go after the last NL_COUNT[layer] blocks of that layer (method.md C: resnet50
# layer2 blocks 2,3 and layer3 blocks 3,4,5). Shallower layers get min(count, n_blocks).
NL_COUNT = {"layer2": 2, "layer3": 3}
MODALITIES = ("rgb", "ir")


class PretrainedWeightsError(RuntimeError):
    """Backbone weights could not be obtained (no network, missing file, or keys not matching the arch)."""


class EmbedOutput(NamedTuple):
    """Training-mode output of :class:`EmbedNet`.

    Attributes:
        pool: ``(N, dim)`` GeM-pooled features before the BN neck ("x_pool", used by the triplet,
            intra- and inter-modality losses and the prototypes).
        feat: ``(N, dim)`` BN-neck output (the retrieval descriptor before normalisation).
        logits: ``(N, num_classes)`` classifier output, or ``None`` when there is no classifier.
    """

    pool: torch.Tensor
    feat: torch.Tensor
    logits: Optional[torch.Tensor]


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
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    bad_shape = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k])]
    if missing or unexpected or bad_shape:
        example = (missing + unexpected + bad_shape)[0]
        raise PretrainedWeightsError(
            f"{source} does not match {arch}: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(bad_shape)} mis-shaped keys (e.g. {example!r})")
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


class EmbedNet(nn.Module):
    """Two-stream ResNet with shared trunk, non-local blocks, GeM, BN neck and optional classifier.

    Args:
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        num_classes: classifier size; ``0`` means no classifier (stage 1, evaluation).
        non_local: insert the non-local blocks (released default ``on``).
        nl_inter_channels: ``c'`` of the non-local blocks; ``None`` = 1 (release quirk).
        backbone_state: torchvision ResNet state dict loaded into all three instances, or ``None``.
        source: description of ``backbone_state`` for error messages.

    Attributes: ``arch``, ``num_classes``, ``dim`` (2048 for resnet50, 512 otherwise),
    ``nl_positions`` (``{"layer2": (...), "layer3": (...)}``, 0-based block indices followed by a
    non-local block).
    """

    def __init__(self, arch: str = "resnet50", num_classes: int = 0, non_local: bool = True,
                 nl_inter_channels: Optional[int] = None,
                 backbone_state: Optional[Mapping[str, torch.Tensor]] = None,
                 source: str = "state dict") -> None:
        super().__init__()
        if backbone_state is None:
            # Random weights, but one draw for all three copies: with ImageNet weights the two stems
            # start identical too, which is what lets early cross-modality clusters form.
            backbone_state = make_resnet(arch).state_dict()
        rgb, ir, shared = (make_resnet(arch, backbone_state, source) for _ in range(3))
        self.arch = arch
        self.dim = ARCHS[arch][1]
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
        self.pool = GeM(p=3.0, eps=1e-12)
        self.bottleneck = nn.BatchNorm1d(self.dim)
        nn.init.normal_(self.bottleneck.weight, 1.0, 0.01)
        nn.init.zeros_(self.bottleneck.bias)
        self.bottleneck.bias.requires_grad_(False)  # frozen shift, as in the release
        self.num_classes = 0
        self.classifier: Optional[nn.Linear] = None
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh bias-free ``Linear(dim, num_classes)``, weight ~ N(0, 0.001).

        ``num_classes = 0`` removes it. The new layer is created on the device/dtype of the BN neck, so
        this can be called after ``.to(device)`` (stage 2 starts from a stage-1 model without one).
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = int(num_classes)
        if num_classes == 0:
            self.classifier = None
            return
        ref = self.bottleneck.weight
        layer = nn.Linear(self.dim, num_classes, bias=False, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(layer.weight, 0.0, 0.001)
        self.classifier = layer

    def _run_layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run trunk layer ``name``, applying a non-local block after each listed block index."""
        positions = self.nl_positions.get(name, ())
        for index, block in enumerate(getattr(self, name)):
            x = block(x)
            if index in positions:
                x = self.non_local[name][positions.index(index)](x)
        return x

    def feature_map(self, x_rgb: Optional[torch.Tensor] = None,
                    x_ir: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Trunk output ``(N_rgb + N_ir, dim, H/16, W/16)`` (layer4 has stride 1).

        When both inputs are given the stem outputs are concatenated (RGB first) *before* the shared
        trunk, so its BatchNorm statistics are computed over the mixed batch (required by the method).
        """
        parts = []
        if x_rgb is not None:
            parts.append(self.rgb_stem(x_rgb))
        if x_ir is not None:
            parts.append(self.ir_stem(x_ir))
        if not parts:
            raise ValueError("EmbedNet needs x_rgb, x_ir or both")
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = self._run_layer(name, x)
        return x

    def forward(self, x_rgb: Optional[torch.Tensor] = None, x_ir: Optional[torch.Tensor] = None):
        """Embed RGB and/or IR images ``(N, 3, H, W)``; outputs are ordered RGB rows first.

        Training mode: :class:`EmbedOutput` ``(pool, feat, logits)``.
        Eval mode: ``F.normalize(feat)`` of shape ``(N, dim)`` (the released retrieval descriptor).
        """
        pool = self.pool(self.feature_map(x_rgb, x_ir))
        feat = self.bottleneck(pool)
        if not self.training:
            return F.normalize(feat, dim=1)
        logits = self.classifier(feat) if self.classifier is not None else None
        return EmbedOutput(pool=pool, feat=feat, logits=logits)

    def extract(self, x: torch.Tensor, modality: str, flip: bool = False,
                renormalize: bool = True) -> torch.Tensor:
        """Eval-mode descriptors ``(N, dim)`` of images ``x`` from one ``modality`` ("rgb" or "ir").

        Without ``flip``: ``normalize(feat(x))`` (main.py/test.py protocol, method.md H.1).
        With ``flip``: ``f = (normalize(feat(x)) + normalize(feat(flip(x)))) / 2``; ``renormalize=True``
        returns ``normalize(f)`` (Baseline.py's evaluation), ``renormalize=False`` returns ``f`` itself,
        the un-normalised average used as the stage-1 clustering descriptor (method.md K).

        The model must be in eval mode (train-mode BatchNorm would use batch statistics and update
        the running ones); gradient tracking is left to the caller (wrap in ``torch.no_grad()``).
        """
        if self.training:
            raise RuntimeError("EmbedNet.extract needs eval mode: call model.eval() first")
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        n = x.shape[0]
        # In eval mode BN uses running statistics, so one batch of [x; flip(x)] equals two passes.
        inputs = torch.cat([x, torch.flip(x, dims=[3])], dim=0) if flip else x
        feats = self(inputs, None) if modality == "rgb" else self(None, inputs)
        if not flip:
            return feats
        mean = (feats[:n] + feats[n:]) / 2
        return F.normalize(mean, dim=1) if renormalize else mean


def _out_channels(layer: nn.Sequential) -> int:
    """Output channels of a torchvision ResNet layer (last BN of its last block)."""
    last = layer[-1]
    bn = last.bn3 if hasattr(last, "bn3") else last.bn2
    return bn.num_features


def param_groups_stage2(model: EmbedNet, lr: float) -> List[dict]:
    """SGD parameter groups of stage 2 (method.md F.4), trainable parameters only.

    Returns three dicts ``{"name", "params", "lr", "lr_mult"}``:
    0 ``backbone`` (everything except BN neck and classifier) at ``0.1·lr``;
    1 ``bottleneck`` (BN neck; its frozen bias is excluded) at ``lr``;
    2 ``classifier`` at ``lr`` (empty list when the model has none).
    ``lr_mult`` lets a schedule set ``group["lr"] = base_lr * group["lr_mult"]``.
    """
    head_ids = {id(p) for p in model.bottleneck.parameters()}
    if model.classifier is not None:
        head_ids |= {id(p) for p in model.classifier.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    neck = [p for p in model.bottleneck.parameters() if p.requires_grad]
    classifier = [] if model.classifier is None else [
        p for p in model.classifier.parameters() if p.requires_grad]
    return [
        {"name": "backbone", "params": backbone, "lr": 0.1 * lr, "lr_mult": 0.1},
        {"name": "bottleneck", "params": neck, "lr": lr, "lr_mult": 1.0},
        {"name": "classifier", "params": classifier, "lr": lr, "lr_mult": 1.0},
    ]
