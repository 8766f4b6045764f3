"""Exact k-nearest-neighbour search by squared L2 distance (the neighbour table of the Jaccard distance).

The torch backend computes the Gram matrix block by block and keeps a running top-k per row, so memory is
O(N·k + chunk²) instead of O(N²). The Gram matrix is symmetric: only the blocks (a, b) with a <= b are
multiplied and each block updates the running top-k of both its row block and its column block, which halves
the FLOPs; off-diagonal blocks only merge the entries below the rows' current k-th distance (see
``torch_knn``). The faiss backend (optional dependency) uses an exact flat L2 index.

Conventions shared by both backends:
* the distance is the squared L2 distance ||x_i||² + ||x_j||² − 2⟨x_i, x_j⟩ in float32 (the same expansion
  faiss uses), so features need not be L2-normalised;
* every point is its own first neighbour (column 0), even when exact duplicates exist — for non-duplicated
  data this is what an exact search returns anyway, and it keeps R(i, k) of the Jaccard distance well defined;
* ties are broken by the lower index (both backends). The same pair's distance can
  differ by a few ulps between Gram blocks of different shapes (BLAS picks other kernels), so exact
  duplicates would otherwise come out in an order that depends on ``chunk``, the CPU or the GPU: rows
  whose neighbour distances lie within rounding of each other are re-ranked by the directly computed
  ||x_i − x_j||², which is exactly 0 for duplicates (see ``rerank_near_ties``). The search keeps
  ``TIE_MARGIN`` neighbours beyond k until after that re-ranking, so the re-ranking also decides which
  tied candidates take the last of the k places (up to TIE_MARGIN tied candidates past the k-th).

Devices: the torch backend runs where the features are (or on ``device``), so a CUDA run searches on its
GPU. The Gram products there are exact float32: TF32, which the training enables for speed
(utils/device.py), is switched off for the search (``exact_float32``), so the neighbours are those of
the CPU path (up to exact ties, see above). Memory on the device: the features (N·D·4 bytes) plus about
11·chunk² bytes of blocks and N·k·16 bytes of running lists — for SYSU-MM01's joint clustering
(34,167 × 2048, k 40, chunk 4096) 280 MB + 185 MB + 22 MB, about 0.5 GB.

Where things live: the public entry points (:func:`knn_search`, :func:`knn_table`, :func:`as_float_tensor`,
:func:`exact_float32`) here; the blocked torch search (:func:`clustering.knn_exact.torch_knn`), the near-tie
re-ranking (:func:`clustering.knn_ties.rerank_near_ties`) and the faiss backend
(:func:`clustering.knn_faiss.faiss_knn`) in their modules, which only this module calls.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .knn_exact import torch_knn
from .knn_faiss import faiss_knn
from .knn_ties import rerank_near_ties

ArrayLike = Union[np.ndarray, torch.Tensor]
# Neighbours searched beyond k before the near-tie re-ranking cuts the table to k (see knn_table).
TIE_MARGIN = 8

def as_float_tensor(features: ArrayLike, device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """(N, D) numpy/torch features → contiguous float32 tensor on ``device`` (default: the input's device).

    Raises ValueError for a wrong rank, an empty array or non-finite values.
    """
    x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    x = x.detach()
    if device is not None:
        x = x.to(device)
    x = x.to(torch.float32).contiguous()
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf")
    return x


@contextlib.contextmanager
def exact_float32(device: torch.device):
    """float32 matrix products on ``device`` without TF32 for the duration (restored afterwards).

    Only the legacy ``allow_tf32`` switch is touched, and only when it is on, so a process that set the
    precision through torch's newer API is never left with a mix of the two.
    """
    matmul = torch.backends.cuda.matmul
    if device.type != "cuda" or not matmul.allow_tf32:
        yield
        return
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = True


def knn_table(x: torch.Tensor, k: int, knn: str = "torch", chunk: int = 4096):
    """Neighbour table for the Jaccard distance: (indices (N, k) int64, squared distances (N, k),
    inner products (N, k) or None for faiss), all torch tensors; x must come from as_float_tensor."""
    if knn == "torch":
        k = min(int(k), x.shape[0])
        # TIE_MARGIN extra columns: which of several (near-)tied candidates takes the last places is then
        # decided by the exact re-ranking (direct distance, then index), not by the rounding of the Gram
        # block they came from, so block size and device do not change the table.
        with torch.no_grad(), exact_float32(x.device):
            idx, dist, dots = torch_knn(x, min(k + TIE_MARGIN, x.shape[0]), int(chunk))
        return idx[:, :k].contiguous(), dist[:, :k].contiguous(), dots[:, :k].contiguous()
    if knn == "faiss":
        k = min(int(k), x.shape[0])
        idx, dist = (t.to(x.device) for t in faiss_knn(x, min(k + TIE_MARGIN, x.shape[0])))
        # The same near-tie re-ranking as the torch backend, so both give the same table (their rounding differs).
        rerank_near_ties(x, (x * x).sum(dim=1), [dist, torch.zeros_like(dist), idx])
        return idx[:, :k].contiguous(), dist[:, :k].contiguous(), None
    raise ValueError(f"knn must be 'torch' or 'faiss', got {knn!r}")


def knn_search(features: ArrayLike, k: int, knn: str = "torch",
               device: Optional[Union[str, torch.device]] = None,
               chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of ``features`` among all rows, by squared L2 distance.

    Args:
        features: (N, D) numpy array or torch tensor (any float dtype; computed in float32).
        k: neighbours per point including the point itself; clamped to N.
        knn: "torch" (blocked matmul on ``device``) or "faiss" (exact flat index; needs faiss-cpu, or
            faiss-gpu to search on a CUDA ``device``).
        device: torch device for the "torch" backend; default = the device of ``features`` (CPU for numpy).
        chunk: block size of the Gram matrix; peak extra memory ≈ 11·chunk² bytes + N·k·16 bytes.

    Returns:
        (indices, distances): int64 (N, k') and float32 (N, k') numpy arrays, k' = min(k, N), rows sorted by
        increasing squared distance d_ij = ||f_i||² + ||f_j||² − 2⟨f_i, f_j⟩, column 0 = the point itself.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    x = as_float_tensor(features, device)
    idx, dist, _ = knn_table(x, k, knn, chunk)
    return idx.cpu().numpy(), dist.cpu().numpy()
