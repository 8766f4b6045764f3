"""The faiss backend of the exact k-NN search (optional dependency): an exact flat L2 index, on the
features' GPU with faiss-gpu, else on the CPU; self moved to column 0 as :mod:`clustering.knn` requires.

faiss-gpu's ``StandardGpuResources`` (streams, cuBLAS handles, a scratch allocation of several hundred
MB per GPU) is made once, on first use, and kept for the process (:func:`gpu_resources`): every
clustering of every epoch searches with it instead of setting up a new one.
"""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch


@functools.lru_cache(maxsize=None)
def gpu_resources(faiss):
    """The process's one ``faiss.StandardGpuResources`` (of the ``faiss`` module given), made on first use;
    it serves every GPU (faiss sets up each device lazily)."""
    return faiss.StandardGpuResources()


def faiss_index(faiss, dim: int, device: torch.device):
    """(index, resources): an exact flat L2 index on the GPU of ``device`` when faiss-gpu is installed,
    else on the CPU. The GPU resources must outlive the index, so they are returned too."""
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        config = faiss.GpuIndexFlatConfig()
        config.device = device.index if device.index is not None else torch.cuda.current_device()
        resources = gpu_resources(faiss)
        return faiss.GpuIndexFlatL2(resources, dim, config), resources
    return faiss.IndexFlatL2(dim), None


def faiss_knn(x: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact search with a faiss flat L2 index (faiss-gpu on the features' GPU when installed, else the
    CPU); self moved to column 0 (see module docstring). Returns (indices (N, k) int64, squared distances
    (N, k) float32) on the CPU, in faiss's order (the caller re-ranks near ties)."""
    try:
        import faiss  # optional dependency
    except ImportError:
        raise ImportError("knn='faiss' needs the faiss package (pip install faiss-cpu); "
                          "use knn='torch' otherwise") from None
    xs = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
    index, _resources = faiss_index(faiss, xs.shape[1], x.device)
    index.add(xs)
    dist, idx = index.search(xs, k)
    n = xs.shape[0]
    self_idx = np.arange(n)[:, None]
    # Drop self from wherever it is (or the last column if absent) and put it in front.
    keep = idx != self_idx
    missing = keep.all(axis=1)
    keep[missing, k - 1] = False
    rest_i = idx[keep].reshape(n, k - 1)
    rest_d = dist[keep].reshape(n, k - 1)
    idx = np.concatenate([self_idx, rest_i], axis=1).astype(np.int64)
    dist = np.concatenate([np.zeros((n, 1), np.float32), np.maximum(rest_d, 0)], axis=1)
    return torch.from_numpy(idx), torch.from_numpy(dist.astype(np.float32))
