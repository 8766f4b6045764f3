"""A visible-only synthetic person population for supervised backbone pretraining (an ImageNet stand-in).

MMM starts from ImageNet weights; none can be downloaded where this project is developed and tested, so
``scripts/pretrain_backbone.py`` trains the torchvision ResNet on people drawn here instead. Like
ImageNet, the population teaches appearance, not the task: it holds **visible images only** (no infrared
image, no visible-infrared pair), of people drawn from their own random stream, so they share no identity
with any generated evaluation set.

The images must be useful on renderings this project has never seen, so every knob varies more than in
the evaluation generator (:mod:`data.synthetic`): body proportions are stretched beyond its ranges, every
image has its own freshly drawn camera (background, lighting, clutter, colour cast), poses are wider, and
:func:`augment` applies strong, batched augmentation on top (affine jitter, blur, hue rotation, channel
permutation, grayscale, brightness/contrast/saturation, noise, erasing). Strong colour augmentation is the
usual self-supervised recipe; here it keeps the features from resting on garment colour alone.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .synthetic_render import Identity, make_camera, make_identity, make_pose, render

PRETRAIN_STREAM = 7   # rng namespace of this population (data.synthetic uses 1 and 2)
# Identity fields stretched by a random factor, and the (low, high) factor range.
_STRETCH = {"height": (0.8, 1.08), "head": (0.8, 1.25), "shoulder": (0.75, 1.3), "waist": (0.85, 1.15),
            "leg": (0.85, 1.15)}


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), PRETRAIN_STREAM, *(int(k) for k in keys)])


def diverse_identity(rng: np.random.Generator) -> Identity:
    """A person of the evaluation generator's kind with its proportions stretched beyond that generator's
    ranges (each field times a random factor from ``_STRETCH``)."""
    p = make_identity(rng)
    return dataclasses.replace(p, **{k: float(getattr(p, k) * rng.uniform(*r)) for k, r in _STRETCH.items()})


def _diverse_pose(rng: np.random.Generator, height: int, width: int):
    """A pose with wider placement and scale jitter than the evaluation generator's."""
    pose = make_pose(rng, height, width)
    return dataclasses.replace(pose, dx=pose.dx * rng.uniform(0.5, 2.0), scale=pose.scale * rng.uniform(0.85, 1.12),
                               dy=pose.dy + rng.uniform(-0.04, 0.04) * height)


def render_population(ids: int, images_per_id: int, seed: int, height: int, width: int,
                      progress: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Render ``ids`` people x ``images_per_id`` visible images at (height, width).

    Every image gets its own random camera, so the background never identifies a person.
    Returns (images (N, 3, H, W) uint8, labels (N,) int64), N = ids * images_per_id; deterministic in ``seed``.
    """
    imgs = np.empty((ids * images_per_id, height, width, 3), np.uint8)
    for pid in tqdm(range(ids), desc="render", file=sys.stderr, disable=not progress):
        person = diverse_identity(_rng(seed, 0, pid))
        for n in range(images_per_id):
            rng = _rng(seed, 1, pid, n)
            cam = make_camera(rng, ir=False, outdoor=bool(rng.random() < 0.5))
            imgs[pid * images_per_id + n] = render(person, cam, _diverse_pose(rng, height, width), rng, height, width)
    labels = torch.arange(ids).repeat_interleave(images_per_id)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), labels


def _affine(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random scale (0.8-1.2), aspect (±10 %), rotation (±8°), shift (±10 %) and flip, per image."""
    n = x.shape[0]
    u = lambda lo, hi: torch.rand(n, generator=g) * (hi - lo) + lo  # noqa: E731
    s, a, r = u(0.8, 1.2), u(0.9, 1.1), u(-8, 8) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = flip * torch.cos(r) / (s * a), -torch.sin(r) / s
    theta[:, 1, 0], theta[:, 1, 1] = flip * torch.sin(r) / (s * a), torch.cos(r) / s
    theta[:, :, 2] = torch.stack([u(-0.1, 0.1), u(-0.1, 0.1)], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _blur(x: torch.Tensor, g: torch.Generator, p: float = 0.3) -> torch.Tensor:
    """3x3 Gaussian blur of a random subset (other renderers have softer or sharper edges)."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    soft = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    pick = (torch.rand(x.shape[0], generator=g) < p).view(-1, 1, 1, 1)
    return torch.where(pick, soft, x)


def _colour(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Hue rotation (any angle, p 0.8), channel permutation (p 0.5), brightness/contrast/saturation
    jitter (±40 %) and grayscale (p 0.2), per image; x in [0, 1]."""
    n = x.shape[0]
    u = lambda lo, hi: (torch.rand(n, generator=g) * (hi - lo) + lo).view(-1, 1, 1, 1)  # noqa: E731
    # hue rotation = rotation about the gray axis (Rodrigues' formula with axis (1, 1, 1)/sqrt(3))
    ang = torch.rand(n, generator=g) * 2 * math.pi * (torch.rand(n, generator=g) < 0.8)
    c, s = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
    cross = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)
    rot = c * torch.eye(3) + s * cross + (1 - c) * torch.full((3, 3), 1 / 3)
    x = torch.einsum("nij,njhw->nihw", rot, x)
    perm = torch.argsort(torch.rand(n, 3, generator=g), dim=1)
    keep = (torch.rand(n, generator=g) < 0.5)[:, None]
    perm = torch.where(keep, torch.arange(3), perm)
    x = x.gather(1, perm[:, :, None, None].expand_as(x))
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
    x = gray + (x - gray) * u(0.6, 1.4)                                    # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * u(0.6, 1.4)) * u(0.6, 1.4)                   # contrast, brightness
    to_gray = (torch.rand(n, generator=g) < 0.2).view(-1, 1, 1, 1)
    return torch.where(to_gray, (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x), x)


def _erase(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Random erasing: a rectangle of 2-30 % of the image filled with noise, per image with prob. ``p``."""
    n, _, h, w = x.shape
    area = torch.rand(n, generator=g) * 0.28 + 0.02
    aspect = torch.exp(torch.rand(n, generator=g) * 2.4 - 1.2)
    eh = (torch.sqrt(area * aspect) * h).clamp(1, h)
    ew = (torch.sqrt(area / aspect) * w).clamp(1, w)
    y0, x0 = torch.rand(n, generator=g) * (h - eh), torch.rand(n, generator=g) * (w - ew)
    yy, xx = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = ((yy >= y0.view(-1, 1, 1)) & (yy < (y0 + eh).view(-1, 1, 1)) &
           (xx >= x0.view(-1, 1, 1)) & (xx < (x0 + ew).view(-1, 1, 1)))
    box &= (torch.rand(n, generator=g) < p).view(-1, 1, 1)
    return torch.where(box[:, None], torch.rand(x.shape, generator=g), x)


def augment(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Strong augmentation of a batch. images (N, 3, H, W) uint8 -> (N, 3, H, W) float in [0, 1]."""
    x = images.float() / 255
    x = _blur(_affine(x, g), g)
    x = _colour(x, g)
    x = x + torch.randn(x.shape, generator=g) * (torch.rand(x.shape[0], generator=g) * 0.04).view(-1, 1, 1, 1)
    return _erase(x.clamp(0, 1), g)
