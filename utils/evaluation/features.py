"""Batched, no-grad feature extraction through the stem of each image's modality."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.images import ImageDataset
from data.sample import MODALITIES, RGB, Sample
from data.transforms import build_test_transform
from model import input_memory_format
from utils.device import autocast
from utils.settings import TEST_INTERPOLATION


@torch.no_grad()
def embed_batch(model: nn.Module, x: torch.Tensor, modality: str, flip: bool = False,
                renormalize: bool = True) -> torch.Tensor:
    """Eval-mode features of one batch (B,3,H,W) of one ``modality`` ("rgb" or "ir") -> (B,D): the one
    flip descriptor of the project (test protocols, stage-1 clustering, the benchmarks).

    The model's eval forward returns L2-normalised BN-neck features f(x). With ``flip`` the
    descriptor is (f(x) + f(flip x)) / 2, re-normalised when ``renormalize`` (the stage-1
    clustering descriptor of method.md D.2 step 1 is the plain average, ``renormalize=False``).
    ``model`` may be wrapped (DataParallel); it must be in eval mode (train-mode BatchNorm would use
    the batch's statistics and update the running ones).
    """
    if model.training:
        raise RuntimeError("embed_batch needs the model in eval mode: call model.eval() first")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")

    def forward(inp):
        return model(x_rgb=inp) if modality == RGB else model(x_ir=inp)

    feats = forward(x)
    if flip:
        feats = (feats + forward(torch.flip(x, dims=[3]))) / 2
        if renormalize:
            feats = F.normalize(feats, dim=1)
    return feats


@dataclass(frozen=True)
class Extraction:
    """How :func:`extract_features` reads and embeds images.

    Attributes:
        device: where the model runs; ``out_device``: where the features go (the CPU, or the training
            device when stage 1 clusters them there).
        img_h, img_w, interpolation, cache: the input size, resampling ("bicubic" | "lanczos") and the
            pre-resized image cache (or None).
        flip: average f(x) and f(flip x); ``renormalize``: L2-normalise that average (see :func:`embed_batch`).
        amp: autocast dtype (None = float32; utils.device.amp_dtype resolves --amp once).
        progress: show a progress bar.
    """

    device: torch.device
    img_h: int = 288
    img_w: int = 144
    interpolation: str = TEST_INTERPOLATION
    cache: Optional[object] = None
    batch_size: int = 128
    workers: int = 2
    flip: bool = False
    renormalize: bool = True
    amp: Optional[torch.dtype] = None
    progress: bool = True
    out_device: Union[str, torch.device] = "cpu"


@torch.no_grad()
def extract_features(model: nn.Module, samples: Sequence[Sample], how: Extraction,
                     desc: str = "features") -> torch.Tensor:
    """Features of ``samples`` (all of one modality) as a float32 tensor (N, D) on ``how.out_device``, in order.

    rgb samples go through the rgb stem, ir samples through the ir stem. The model is put in eval
    mode and restored to its previous mode afterwards. The features are float32 whatever ``how.amp``
    is; a model in channels_last gets channels_last batches.
    """
    if not samples:
        raise ValueError(f"extract_features: no {desc} images")
    modalities = {s.modality for s in samples}
    if len(modalities) != 1:
        raise ValueError("extract_features expects samples of one modality")
    modality = modalities.pop()
    device = how.device
    ds = ImageDataset(list(samples), build_test_transform(), h=how.img_h, w=how.img_w,
                      interpolation=how.interpolation, cache=how.cache)
    cast = autocast(how.amp, device)
    loader = DataLoader(ds, batch_size=how.batch_size, shuffle=False, num_workers=how.workers,
                        pin_memory=device.type == "cuda")
    fmt = input_memory_format(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for imgs, _, _, _ in tqdm(loader, desc=desc, leave=False, disable=not how.progress):
            x = imgs.to(device, non_blocking=True, memory_format=fmt)
            with cast:
                f = embed_batch(model, x, modality, how.flip, how.renormalize)
            out.append(f.float().to(how.out_device, non_blocking=False))
    finally:
        model.train(was_training)
    return torch.cat(out)
