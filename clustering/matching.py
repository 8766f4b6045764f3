"""Multi-memory matching of visible (RGB) clusters to infrared (IR) clusters (method E.2, G.1).

Every cluster is represented by M memories (its k-means sub-cluster centres).  The cost between a
visible cluster v and an infrared cluster r is a one-directional Chamfer sum of memory distances:

* ``"ir2rgb"`` (released code, default):  C[v, r] = Σ_i min_j ‖c^r_i − c^v_j‖₂  (each IR memory i
  looks for its nearest RGB memory j);
* ``"rgb2ir"`` (paper, as far as known):  C[v, r] = Σ_j min_i ‖c^r_i − c^v_j‖₂.

All K_rgb·M × K_ir·M memory distances come from one ``torch.cdist`` call, in exact float32 on a GPU
(TF32, which the training enables for the network, is switched off for it: ``exact_float32``).

Matching:

* ``"greedy"`` (released): every visible cluster takes the infrared cluster of least cost (first
  index among ties); several visible clusters may share a partner.  The release starts its running
  minimum at 20 (only costs < 20 can be chosen); that threshold is dropped here — it never binds for
  ~unit-norm features, and when it would, the release silently reuses the previous cluster's partner.
* ``"hungarian"`` (paper: one-to-one): ``scipy.optimize.linear_sum_assignment`` on the rectangular
  cost.  If K_rgb ≤ K_ir every visible cluster gets a distinct partner.  If K_rgb > K_ir only K_ir
  visible clusters are assigned; the leftovers take their least-cost infrared cluster (greedy rule),
  so every visible cluster still receives a label.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .knn import exact_float32

ArrayLike = Union[np.ndarray, torch.Tensor]
COSTS = ("ir2rgb", "rgb2ir")
MATCHINGS = ("greedy", "hungarian")


def _as_memories(x: ArrayLike, name: str) -> torch.Tensor:
    """(K, M, D) float tensor from numpy or torch input (kept on its device)."""
    t = torch.as_tensor(x)
    if t.dim() != 3:
        raise ValueError(f"{name} must have shape (K, M, D), got {tuple(t.shape)}")
    return t if t.is_floating_point() else t.float()


def cost_matrix(memories_rgb: ArrayLike, memories_ir: ArrayLike, cost: str = "ir2rgb") -> torch.Tensor:
    """Chamfer-type cost between every visible and every infrared cluster.

    memories_rgb (K_rgb, M_rgb, D), memories_ir (K_ir, M_ir, D) -> C (K_rgb, K_ir) on the RGB
    memories' device, in the promoted float dtype.
    ``"ir2rgb"``: C[v, r] = Σ_i min_j ‖c^r_i − c^v_j‖₂;  ``"rgb2ir"``: C[v, r] = Σ_j min_i ‖c^r_i − c^v_j‖₂
    (i runs over the IR memories of r, j over the RGB memories of v).
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    mv, mr = _as_memories(memories_rgb, "memories_rgb"), _as_memories(memories_ir, "memories_ir")
    dtype = torch.promote_types(mv.dtype, mr.dtype)
    mr = mr.to(device=mv.device, dtype=dtype)
    mv = mv.to(dtype)
    (kv, m_v, d), (kr, m_r, d_r) = mv.shape, mr.shape
    if d != d_r:
        raise ValueError(f"feature dimensions differ: {d} (RGB) vs {d_r} (IR)")
    if kv == 0 or kr == 0:
        return torch.zeros(kv, kr, dtype=dtype, device=mv.device)
    with exact_float32(mv.device):  # cdist's matrix product without TF32 on a GPU (exact float32)
        dist = torch.cdist(mv.reshape(kv * m_v, d), mr.reshape(kr * m_r, d)).view(kv, m_v, kr, m_r)
    if cost == "ir2rgb":
        return dist.amin(dim=1).sum(-1)       # min over RGB memories j, sum over IR memories i
    return dist.amin(dim=3).sum(1)            # min over IR memories i, sum over RGB memories j


def assign(cost: ArrayLike, matching: str = "greedy") -> np.ndarray:
    """Partner (column) of every row of a cost matrix (K_rgb, K_ir) -> int64 (K_rgb,), −1 if K_ir = 0.

    ``"greedy"``: argmin of each row (first index among ties), many-to-one.
    ``"hungarian"``: minimum-cost one-to-one assignment (linear_sum_assignment); rows left without a
    column when K_rgb > K_ir fall back to their row argmin.
    """
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    c = torch.as_tensor(cost).detach().cpu().double().numpy()
    if c.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {c.shape}")
    kv, kr = c.shape
    if kr == 0:
        return np.full(kv, -1, dtype=np.int64)
    partner = np.argmin(c, axis=1).astype(np.int64)       # np.argmin: first index among ties
    if matching == "hungarian" and kv:
        rows, cols = linear_sum_assignment(c)
        partner[rows] = cols                               # unassigned rows keep the greedy choice
    return partner


def match_clusters(memories_rgb: ArrayLike, memories_ir: ArrayLike, matching: str = "greedy",
                   cost: str = "ir2rgb") -> np.ndarray:
    """Index of each visible cluster's infrared partner: int64 (K_rgb,), −1 when K_ir = 0.

    memories_rgb (K_rgb, M, D), memories_ir (K_ir, M, D), numpy or torch.  The cost is
    :func:`cost_matrix` (``cost`` = "ir2rgb" released / "rgb2ir" paper); ``matching`` = "greedy"
    (released, many-to-one) or "hungarian" (paper, one-to-one; leftovers when K_rgb > K_ir take
    their least-cost partner).
    """
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    return assign(cost_matrix(memories_rgb, memories_ir, cost=cost), matching)
