"""Batched, no-grad feature extraction through the stem of each image's modality."""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.images import ImageDataset
from data.sample import RGB, Sample
from data.transforms import build_test_transform


@torch.no_grad()
def embed_batch(model: nn.Module, x: torch.Tensor, modality: str, flip: bool = False,
                renormalize: bool = True) -> torch.Tensor:
    """Eval-mode features of one batch (B,3,H,W) -> (B,D).

    The model's eval forward returns L2-normalised BN-neck features f(x). With ``flip`` the
    descriptor is (f(x) + f(flip x)) / 2, re-normalised when ``renormalize`` (the stage-1
    clustering descriptor of method.md D.2 step 1 is the plain average, ``renormalize=False``).
    """
    def forward(inp):
        return model(x_rgb=inp) if modality == RGB else model(x_ir=inp)

    feats = forward(x)
    if flip:
        feats = (feats + forward(torch.flip(x, dims=[3]))) / 2
        if renormalize:
            feats = F.normalize(feats, dim=1)
    return feats


@torch.no_grad()
def extract_features(model: nn.Module, samples: Sequence[Sample], *, device: torch.device,
                     img_h: int = 288, img_w: int = 144, interpolation: str = "lanczos", cache=None,
                     batch_size: int = 128, workers: int = 2, flip: bool = False,
                     renormalize: bool = True, amp: bool = False, desc: str = "features",
                     progress: bool = True) -> torch.Tensor:
    """Features of ``samples`` (all of one modality) as a float32 CPU tensor (N, D), in order.

    rgb samples go through the rgb stem, ir samples through the ir stem. The model is put in eval
    mode and restored to its previous mode afterwards.
    """
    if not samples:
        raise ValueError(f"extract_features: no {desc} images")
    modalities = {s.modality for s in samples}
    if len(modalities) != 1:
        raise ValueError("extract_features expects samples of one modality")
    modality = modalities.pop()
    ds = ImageDataset(list(samples), build_test_transform(), h=img_h, w=img_w,
                      interpolation=interpolation, cache=cache)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type="cuda", dtype=torch.float16)
                if amp and device.type == "cuda" else contextlib.nullcontext())
    out = []
    try:
        for imgs, _, _, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
            with autocast:
                f = embed_batch(model, imgs.to(device, non_blocking=True), modality, flip, renormalize)
            out.append(f.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
