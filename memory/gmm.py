"""Per-sample clean probabilities from a two-component GMM on the losses (method F.5 step 1).

Small-loss samples are more likely to carry a correct pseudo-label (DivideMix-style). The
released code min–max normalises each per-sample cross-entropy array separately, fits one
``GaussianMixture(n_components=2, max_iter=100, tol=1e-2, reg_covar=5e-4)`` on the concatenated
two RGB views and another on IR, and uses the posterior of the component with the smaller mean
as the weight of each sample in the soft identity loss, the self-mimic term and the prototypes.

Degenerate inputs (fewer than two samples, (nearly) constant losses, a failed fit) give weight 1
for every sample, with a :class:`CleanProbabilityWarning`: the stage-2 losses then reduce to
their unweighted form, which is the safe fallback when the losses carry no information.
"""
from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np
from sklearn.mixture import GaussianMixture

# Spread (max − min) below which losses are treated as constant; losses are O(1) after min–max.
_CONSTANT_SPREAD = 1e-6


class CleanProbabilityWarning(UserWarning):
    """Emitted when the GMM cannot be fitted and every sample gets probability 1."""


def _as_1d_array(losses) -> np.ndarray:
    """Float64 1-D copy of a numpy array, list or (CPU/GPU) torch tensor; rejects NaN/inf."""
    if hasattr(losses, "detach"):  # torch tensor, possibly on a GPU
        losses = losses.detach().cpu().numpy()
    arr = np.asarray(losses, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError("losses contain NaN or inf; the model has probably diverged")
    return arr


def minmax_normalize(losses) -> np.ndarray:
    """Min–max normalise to [0, 1]: (ℓ − min ℓ) / (max ℓ − min ℓ).

    Args:
        losses: (N,) array-like of finite values.

    Returns:
        (N,) float64 array in [0, 1]; all zeros if the input is constant or empty.
    """
    arr = _as_1d_array(losses)
    if arr.size == 0:
        return arr
    lo, hi = arr.min(), arr.max()
    if hi - lo <= 0.0:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def _all_ones(n: int, reason: str) -> np.ndarray:
    """Fallback weights with a warning explaining why."""
    warnings.warn(f"clean_probability: {reason}; every sample gets clean probability 1",
                  CleanProbabilityWarning, stacklevel=3)
    return np.ones(n, dtype=np.float32)


def clean_probability(losses, seed: int = 0, max_iter: int = 100, tol: float = 1e-2,
                      reg_covar: float = 5e-4) -> np.ndarray:
    """Posterior of the low-mean component of a 2-component 1-D GMM fitted on ``losses``.

    p_k = P(z_k = argmin_j m_j | ℓ_k) under ℓ ~ Σ_j π_j N(m_j, σ_j²).

    Args:
        losses: (N,) per-sample losses, already min–max normalised (see :func:`minmax_normalize`).
        seed: ``random_state`` of the GMM (k-means initialisation), for determinism.
        max_iter, tol, reg_covar: GaussianMixture settings of the released code.

    Returns:
        (N,) float32 array in [0, 1], never NaN. All ones (with a CleanProbabilityWarning) if
        N < 2, if the losses are (nearly) constant or if the fit fails.
    """
    x = _as_1d_array(losses)
    n = x.size
    if n < 2:
        return _all_ones(n, f"only {n} sample(s)")
    if np.ptp(x) <= _CONSTANT_SPREAD * max(1.0, float(np.abs(x).max())):
        return _all_ones(n, "losses are (nearly) constant")
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                          random_state=seed)
    try:
        gmm.fit(x.reshape(-1, 1))
        prob = gmm.predict_proba(x.reshape(-1, 1))[:, int(np.argmin(gmm.means_.reshape(-1)))]
    except (ValueError, np.linalg.LinAlgError, FloatingPointError) as err:
        return _all_ones(n, f"GaussianMixture fit failed ({err})")
    if not np.all(np.isfinite(prob)):
        return _all_ones(n, "GaussianMixture returned non-finite posteriors")
    return prob.astype(np.float32)


def clean_probabilities(loss_rgb_view1, loss_rgb_view2, loss_ir,
                        seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clean probabilities of the three stage-2 inputs, released scheme (method F.5 step 1).

    Each array is min–max normalised on its own; one GMM is fitted on [ℓ_v1; ℓ_v2] (both RGB
    views share the mixture) and one on ℓ_r; the RGB posteriors are split back into two halves.

    Args:
        loss_rgb_view1: (N_v,) per-sample CE of RGB view 1.
        loss_rgb_view2: (N_v,) per-sample CE of RGB view 2.
        loss_ir: (N_r,) per-sample CE of the IR images.
        seed: GMM random_state (the IR mixture uses the same seed).

    Returns:
        (p_v1 (N_v,), p_v2 (N_v,), p_r (N_r,)) float32 arrays.
    """
    v1 = minmax_normalize(loss_rgb_view1)
    v2 = minmax_normalize(loss_rgb_view2)
    if v1.shape != v2.shape:
        raise ValueError(f"the two RGB views must have the same length, got {v1.size} and {v2.size}")
    p_rgb = clean_probability(np.concatenate([v1, v2]), seed=seed)
    p_ir = clean_probability(minmax_normalize(loss_ir), seed=seed)
    return p_rgb[: v1.size], p_rgb[v1.size:], p_ir
