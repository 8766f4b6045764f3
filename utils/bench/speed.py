"""Timing of the training parts on synthetic tensors (used by scripts/bench_train.py): one optimizer step
of each stage with the real step functions, flip-averaged feature extraction, and the clustering of
deterministic SYSU-shaped descriptors. Every input is generated here from fixed seeds."""
from __future__ import annotations

import time
from typing import Callable, Dict

import numpy as np
import torch


def timed(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Best-of-``repeat`` seconds of ``fn()`` after ``warmup`` calls (CUDA work synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _model(size: dict, device, channels_last: bool, classes: int = 0):
    from model import build_model, to_channels_last

    torch.manual_seed(0)
    model = build_model(arch=size["arch"], num_classes=classes, pretrained="none").to(device)
    return to_channels_last(model) if channels_last else model


def _images(n: int, size: dict, gen: torch.Generator, device=None) -> torch.Tensor:
    """(n, 3, h, w) host images; pinned for a CUDA ``device``, as the training loaders deliver them."""
    x = torch.randn(n, 3, size["img_h"], size["img_w"], generator=gen)
    return x.pin_memory() if device is not None and torch.device(device).type == "cuda" else x


def stage1_step(size: dict, device, amp, channels_last: bool, repeat: int) -> float:
    """Seconds of one stage-1 iteration (memory_step + backward + Adam) on synthetic tensors."""
    from memory.cluster_memory import ClusterMemory
    from utils.device import amp_dtype, grad_scaler, optimizer_step
    from utils.train.stage1_steps import memory_step

    gen = torch.Generator().manual_seed(1)
    model = _model(size, device, channels_last).train()
    mems = [ClusterMemory(model.dim, size["classes"]).to(device) for _ in range(2)]
    for m in mems:
        m.set_centroids(torch.randn(size["classes"], model.dim, generator=gen).to(device))
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    amp = amp_dtype(amp, device)  # the --amp value, resolved as a run resolves it
    scaler = grad_scaler(amp, device)
    half = size["s1_views"] // 2
    labels = torch.randint(0, size["classes"], (half,), generator=gen)
    rgb = ((_images(half, size, gen, device), _images(half, size, gen, device)), labels)
    ir = (_images(size["s1_ir"], size, gen, device),
          torch.randint(0, size["classes"], (size["s1_ir"],), generator=gen))

    def step():
        losses = memory_step(model, rgb, ir, mems[0], mems[1], device, amp=amp)
        optimizer_step(sum(losses.values()), opt, scaler)

    return timed(step, device, repeat)


def stage2_step(size: dict, device, amp, channels_last: bool, repeat: int) -> Dict[str, float]:
    """Seconds of one stage-2 training step (forward_batch + batch_losses + SGD) and of one no-grad forward."""
    from utils.device import amp_dtype, grad_scaler, optimizer_step
    from utils.settings import LossSettings
    from utils.train.stage2_steps import batch_losses, forward_batch

    gen = torch.Generator().manual_seed(2)
    k, n = size["classes"], size["s2_ids"] * size["s2_pos"]
    model = _model(size, device, channels_last, classes=k).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    amp = amp_dtype(amp, device)
    scaler = grad_scaler(amp, device)
    y = torch.randperm(k, generator=gen)[:size["s2_ids"]].repeat_interleave(size["s2_pos"])
    idx = torch.arange(n)
    batch = ((_images(n, size, gen, device), _images(n, size, gen, device)), y, y, idx, _images(n, size, gen, device),
             y, y, idx)
    probs = {key: torch.rand(n, generator=gen).to(device) for key in ("v1", "v2", "ir")}
    protos = {key: torch.randn(k, model.dim, generator=gen).to(device) for key in ("v1", "v2", "ir")}
    opts = LossSettings(inter_start_epoch=0)  # every term, at the released weights

    def step():
        optimizer_step(sum(batch_losses(forward_batch(model, batch, device, amp), probs, protos, opts, 5).values()),
                       opt, scaler)

    def forward():
        with torch.no_grad():
            forward_batch(model, batch, device, amp)

    return {"step": timed(step, device, repeat), "forward": timed(forward, device, repeat)}


def extraction_rate(size: dict, device, amp, channels_last: bool, repeat: int) -> float:
    """Images/s of the flip-averaged stage-1 descriptor (two forwards per image), eval mode."""
    from utils.device import amp_dtype, autocast
    from utils.evaluation.features import embed_batch

    model = _model(size, device, channels_last).eval()
    amp = amp_dtype(amp, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = _images(size["extract_batch"], size, torch.Generator().manual_seed(3)).to(device, memory_format=fmt)

    def run():
        with autocast(amp, device):
            embed_batch(model, x, "rgb", flip=True, renormalize=False)

    return size["extract_batch"] / timed(run, device, repeat)


def bench_features(size: dict, seed: int, device):
    """Deterministic clustered descriptors of SYSU's shape: (visible (N_rgb, 2048), infrared (N_ir, 2048)).

    Each identity has a unit centre, each camera-modality an offset, each image Gaussian noise; the rows are
    L2-normalised, like flip-averaged descriptors of a trained network."""
    gen = torch.Generator().manual_seed(seed)
    dim, ids = 2048, size["ids"]
    centres = torch.nn.functional.normalize(torch.randn(ids, dim, generator=gen), dim=1)
    gap = 0.6 * torch.nn.functional.normalize(torch.randn(2, dim, generator=gen), dim=1)
    feats = []
    for m, n in enumerate((size["n_rgb"], size["n_ir"])):
        pid = torch.randint(0, ids, (n,), generator=gen)
        x = centres[pid] + gap[m] + torch.randn(n, dim, generator=gen) / dim ** 0.5
        feats.append(torch.nn.functional.normalize(x, dim=1).to(device))
    return feats


def bench_cluster(size: dict, seed: int, device) -> Dict[str, Dict[str, float]]:
    """Seconds (and clusters, device peak memory) of pseudo_labels for visible, infrared and joint features."""
    from clustering.dbscan import cluster_stats, pseudo_labels

    rgb, ir = bench_features(size, seed, device)
    mod = np.r_[np.zeros(len(rgb), np.int64), np.ones(len(ir), np.int64)]
    cases = {"rgb": (rgb, 30, 6, None), "ir": (ir, 30, 6, None), "joint": (torch.cat([rgb, ir]), 40, 32, mod)}
    out = {}
    for name, (x, k1, k2, modality) in cases.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        labels = pseudo_labels(x, eps=0.6, k1=k1, k2=k2, modality=modality, device=device)
        seconds = time.perf_counter() - start
        row = dict(n=len(x), seconds=seconds, clusters=cluster_stats(labels)["num_clusters"])
        if device.type == "cuda":
            row["device_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        out[name] = row
        print(f"  cluster {name}: " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    return out
