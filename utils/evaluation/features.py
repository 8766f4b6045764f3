"""Batched, no-grad feature extraction through the stem of each image's modality."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.images import ImageDataset
from data.sample import RGB, Sample
from data.transforms import build_test_transform
from model import input_memory_format
from utils.device import AmpMode, autocast


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
                     renormalize: bool = True, amp: AmpMode = "off", desc: str = "features",
                     progress: bool = True, out_device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Features of ``samples`` (all of one modality) as a float32 tensor (N, D) on ``out_device``, in order.

    rgb samples go through the rgb stem, ir samples through the ir stem. The model is put in eval
    mode and restored to its previous mode afterwards. ``amp`` is an ``--amp`` value ("off", "bf16",
    "fp16", or the old bool switch: True = bf16 where supported, see utils.device.amp_dtype); the
    features are float32 whatever it is. ``out_device=device`` keeps them on the GPU (stage 1 clusters
    them there); a model in channels_last gets channels_last batches.
    """
    if not samples:
        raise ValueError(f"extract_features: no {desc} images")
    modalities = {s.modality for s in samples}
    if len(modalities) != 1:
        raise ValueError("extract_features expects samples of one modality")
    modality = modalities.pop()
    ds = ImageDataset(list(samples), build_test_transform(), h=img_h, w=img_w,
                      interpolation=interpolation, cache=cache)
    cast = autocast(amp, device)  # validates amp for the device before any image is read
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    fmt = input_memory_format(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for imgs, _, _, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
            x = imgs.to(device, non_blocking=True, memory_format=fmt)
            with cast:
                f = embed_batch(model, x, modality, flip, renormalize)
            out.append(f.float().to(out_device, non_blocking=False))
    finally:
        model.train(was_training)
    return torch.cat(out)
