"""What every two-stream embedding network of MMM shares, whatever its backbone (method.md C): a visible (RGB)
stem and an infrared stem feed one shared trunk on the concatenated batch, then GeM pooling, a BatchNorm1d
"BN neck" and an optional bias-free classifier; eval mode returns the normalised BN-neck output.

Subclasses (model/agw.py for ResNet, model/mobilenet.py for MobileNetV2) build ``rgb_stem``, ``ir_stem`` and the
trunk, implement :meth:`TwoStreamNet.run_trunk`, then call :meth:`TwoStreamNet.init_head` last, so that the
parameters keep their registration order (stems, trunk, head) and with it the order of optimizer states.
"""
from __future__ import annotations

from typing import Dict, Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GeM


class EmbedOutput(NamedTuple):
    """Training-mode output of a :class:`TwoStreamNet`.

    Attributes:
        pool: ``(N, dim)`` GeM-pooled features before the BN neck ("x_pool", used by the triplet,
            intra- and inter-modality losses and the prototypes).
        feat: ``(N, dim)`` BN-neck output (the retrieval descriptor before normalisation).
        logits: ``(N, num_classes)`` classifier output, or ``None`` when there is no classifier.
    """

    pool: torch.Tensor
    feat: torch.Tensor
    logits: Optional[torch.Tensor]


class TwoStreamNet(nn.Module):
    """Two modality stems, a shared trunk (:meth:`run_trunk`), GeM, BN neck and optional classifier.

    Attributes: ``arch``, ``dim`` (descriptor size), ``num_classes``, ``nl_positions`` (non-local blocks per
    trunk layer; empty when the backbone has none), ``pretrained_info`` (which initial weights were used:
    ``{"source", "file", "sha256"}``).
    """

    arch: str
    dim: int
    rgb_stem: nn.Module
    ir_stem: nn.Module

    def init_head(self, arch: str, dim: int, num_classes: int, pretrained_info: Optional[Mapping[str, str]]) -> None:
        """GeM (p = 3), the BN neck (weight ~ N(1, 0.01), frozen zero bias, as released) and the classifier."""
        self.arch = arch
        self.dim = dim
        self.pretrained_info: Dict[str, str] = dict(pretrained_info or {})
        if not hasattr(self, "nl_positions"):
            self.nl_positions: Dict[str, Sequence[int]] = {}
        self.pool = GeM(p=3.0, eps=1e-12)
        self.bottleneck = nn.BatchNorm1d(dim)
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

    def run_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The shared trunk on the concatenated stem outputs ``(N, C, h, w)`` → ``(N, dim, H/s, W/s)`` (output
        stride s: 16 for the ResNets, 32 for MobileNetV2)."""
        raise NotImplementedError

    def feature_map(self, x_rgb: Optional[torch.Tensor] = None,
                    x_ir: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Trunk output ``(N_rgb + N_ir, dim, H/s, W/s)`` (s: the output stride of :meth:`run_trunk`).

        When both inputs are given the stem outputs are concatenated (RGB first) *before* the shared
        trunk, so its BatchNorm statistics are computed over the mixed batch (required by the method).
        """
        parts = []
        if x_rgb is not None:
            parts.append(self.rgb_stem(x_rgb))
        if x_ir is not None:
            parts.append(self.ir_stem(x_ir))
        if not parts:
            raise ValueError(f"{type(self).__name__} needs x_rgb, x_ir or both")
        return self.run_trunk(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))

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


def param_groups_stage2(model: TwoStreamNet, lr: float) -> list:
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
