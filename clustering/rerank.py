"""k-reciprocal re-ranking of a query x gallery ranking (Zhong et al., CVPR 2017), for test time only.

The queries and the gallery are pooled (N = Q + G unit features) and the project's sparse Jaccard
distance (:func:`clustering.jaccard.jaccard_entries`) is computed on the pool with Zhong et al.'s
settings, so every step is the one of their released ``re_ranking``:

* original distance d_ij = ||x_i - x_j||^2 = 2 - 2<x_i, x_j> (unit features), scaled per row to
  d'_ij = d_ij / max_k d_ik (k over the whole pool; their ``original_dist / max(original_dist, axis=0)``);
* k-reciprocal sets over the k1 + 1 nearest (the sample itself included), expansion with the
  round(k1/2) sets and the 2/3 overlap rule, weights exp(-d'_ij) normalised over the expanded set,
  query expansion over the k2 nearest, Jaccard distance J = 1 - s / (2 - s);
* final distance = (1 - lambda) * J + lambda * d' (J and d' both lie in [0, 1]).

Only the (Q, G) block of the final distance is returned; it replaces -<q, g> for the ranking.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .jaccard import RerankForm, jaccard_entries

# Rows of the pool's Gram matrix computed at once when looking for each row's farthest sample.
_CHUNK = 2048


@dataclass(frozen=True)
class RerankParams:
    """Settings of :func:`rerank_distance` (Zhong et al.'s defaults).

    Attributes:
        k1: size of the k-reciprocal neighbourhoods (k1 + 1 nearest, the sample included).
        k2: neighbours of the local query expansion.
        lam: weight of the original distance in the final distance, in [0, 1].
    """

    k1: int = 20
    k2: int = 6
    lam: float = 0.3

    def __post_init__(self):
        if self.k1 < 1 or self.k2 < 1 or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"re-ranking needs k1 >= 1, k2 >= 1 and 0 <= lambda <= 1, got {self}")


def _row_max_distance(x: torch.Tensor) -> np.ndarray:
    """max_k (2 - 2<x_i, x_k>) over the pool for every row i of x (N, D): (N,) float64, > 0."""
    out = np.empty(x.shape[0])
    for s in range(0, x.shape[0], _CHUNK):
        low = (x[s:s + _CHUNK] @ x.T).min(dim=1).values.double()
        out[s:s + _CHUNK] = (2.0 - 2.0 * low).clamp_(min=1e-12).numpy()
    return out


def rerank_distance(q_feat: torch.Tensor, g_feat: torch.Tensor, params: RerankParams = RerankParams(),
                    knn: str = "torch") -> np.ndarray:
    """Re-ranked query x gallery distances (smaller = closer).

    Args:
        q_feat, g_feat: (Q, D), (G, D) features (L2-normalised here; test features already are).
        params: k1, k2, lambda.
        knn: neighbour search of the Jaccard code ("torch" or "faiss").

    Returns:
        (Q, G) float64 array (1 - lambda) * J + lambda * d' (see the module docstring).
    """
    q = F.normalize(torch.as_tensor(q_feat).detach().float().cpu(), dim=1)
    g = F.normalize(torch.as_tensor(g_feat).detach().float().cpu(), dim=1)
    x = torch.cat([q, g]).contiguous()
    nq = q.shape[0]
    scale = _row_max_distance(x)
    rows, cols, jac, _ = jaccard_entries(x, k1=params.k1, k2=params.k2, knn=knn,
                                         rerank=RerankForm(params.k1 + 1, scale))
    jaccard = np.ones((nq, g.shape[0]))                  # pairs without shared support: J = 1
    keep = (rows < nq) & (cols >= nq)
    jaccard[rows[keep], cols[keep] - nq] = jac[keep]
    original = (2.0 - 2.0 * (q.double() @ g.double().T).numpy()) / scale[:nq, None]
    return (1.0 - params.lam) * jaccard + params.lam * original
