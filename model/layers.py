"""Building blocks of the AGW-style embedding network: GeM pooling and the non-local block.

Both follow the released MMM/AGW code as described in method.md C.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling with a fixed exponent (not learnable, as released).

    For a feature map ``x`` of shape ``(N, C, H, W)`` returns ``(N, C)``::

        gem(x)_c = ( mean_{h,w} x_{c,h,w}^p  +  eps ) ^ (1/p)

    ``eps`` is added *after* the spatial mean (method.md C), which keeps the root differentiable when a
    whole channel is zero. The input is expected to be non-negative (it follows a ReLU in the trunk);
    like the release, no clamp is applied, so negative inputs with an odd ``p`` are the caller's problem.

    Args:
        p: pooling exponent (3 in the release; ``p = 1`` is average pooling).
        eps: constant added to the mean before the root.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-12) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p}")
        self.p = float(p)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``(N, C, H, W)`` to ``(N, C)``."""
        mean = x.flatten(2).pow(self.p).mean(dim=-1)
        return (mean + self.eps).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        """Shown in ``repr(module)``."""
        return f"p={self.p}, eps={self.eps}"


class NonLocalBlock(nn.Module):
    """Non-local block of AGW (dot-product affinity, no softmax), residual and identity at init.

    For ``x`` of shape ``(N, C, H, W)`` with ``M = H·W`` positions, with θ, φ, g 1×1 convolutions
    ``C → c'`` (with bias) and ``W`` a 1×1 convolution ``c' → C`` followed by BatchNorm2d::

        f    = θ(x)ᵀ φ(x) / M            (M × M affinity per sample, no softmax)
        y    = f · g(x)                  (M × c')
        out  = x + BN(W(y))              (N, C, H, W)

    The BatchNorm's weight and bias start at zero, so the block is exactly the identity at
    initialisation and does not disturb the ImageNet trunk it is inserted into.

    ``inter_channels=None`` gives ``c' = 1``: the release computes ``reduc_ratio // reduc_ratio``,
    which is always 1 (method.md C). We keep that quirk by default; pass an explicit value (e.g.
    ``C // 2``, the textbook choice) to deviate.

    The product is evaluated in the released order, ``(θᵀφ / M) · g``: its intermediates are single
    products θ_i φ_j and averages over positions, far inside float16's range (max 65,504) under
    ``--amp fp16`` (at most about 4e3 on a random-init ResNet-50 at 288×144). The cheaper association
    ``θ · (φ·g)`` sums over all M positions first (3.5e4 on the same input); an inf there becomes NaN
    through the zero-initialised BN. The price is an (N, M, M) affinity per block (M = 648 at layer2
    for 288×144: 1.6 MB per image in float32), as in the release.

    Initialisation: θ, φ, g and W keep PyTorch's default Conv2d initialisation (Kaiming-uniform
    weights, uniform bias), as in the release; only the output BN is zeroed.
    """

    def __init__(self, in_channels: int, inter_channels: Optional[int] = None) -> None:
        super().__init__()
        if inter_channels is None:
            inter_channels = 1
        if inter_channels < 1:
            raise ValueError(f"inter_channels must be >= 1, got {inter_channels}")
        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.theta = nn.Conv2d(in_channels, inter_channels, kernel_size=1, bias=True)
        self.phi = nn.Conv2d(in_channels, inter_channels, kernel_size=1, bias=True)
        self.g = nn.Conv2d(in_channels, inter_channels, kernel_size=1, bias=True)
        self.W = nn.Sequential(
            nn.Conv2d(inter_channels, in_channels, kernel_size=1, bias=True),
            nn.BatchNorm2d(in_channels),
        )
        # Zero gamma and beta: BN output is 0, so out == x at init (residual identity).
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``(N, C, H, W)``; returns the same shape."""
        n, _, h, w = x.shape
        positions = h * w
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (N, M, c')
        phi = self.phi(x).flatten(2)  # (N, c', M)
        g = self.g(x).flatten(2).transpose(1, 2)  # (N, M, c')
        # Released order: the affinity divided by M before it meets g keeps float16 intermediates in range.
        f = torch.bmm(theta, phi) / positions  # (N, M, M)
        y = torch.bmm(f, g)  # (N, M, c')
        y = y.transpose(1, 2).reshape(n, self.inter_channels, h, w)
        return x + self.W(y)

    def extra_repr(self) -> str:
        """Shown in ``repr(module)``."""
        return f"in_channels={self.in_channels}, inter_channels={self.inter_channels}"
