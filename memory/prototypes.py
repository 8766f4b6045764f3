"""Confidence-weighted class prototypes of stage 2 (method F.5 step 4, F.6 step 3, G.1 "SCA").

After each training epoch the released code makes a second, no-grad pass over the training loader
and recomputes, for every class c seen in that pass,

    μ[c] = Σ_{k : y_k = c} w_k · f_k  /  count_c,

where w_k is the GMM clean probability of sample k and count_c the plain (unweighted) number of
occurrences of c in the pass (a sample drawn twice by the sampler counts twice). Classes not seen
keep their previous row. Note that the result is *not* a weighted mean: low-confidence samples
shrink the prototype towards zero. Three tables are kept (RGB view 1, RGB view 2, IR), each
n_class × 2048, starting at zero.

The sums must run over the whole pass, not per batch, so the pipeline feeds batches into a
:class:`PrototypeAccumulator` and calls :meth:`PrototypeAccumulator.result` at the end.
"""
from __future__ import annotations

from typing import Optional, Union

import torch


class PrototypeAccumulator:
    """Running Σ w·f and occurrence counts per class over one prototype pass.

    Args:
        num_classes: C, rows of the prototype table.
        dim: D, feature dimension.
        device: where the sums live (use the features' device to avoid transfers).
        dtype: accumulation dtype (float32 by default, also under mixed precision).
    """

    def __init__(self, num_classes: int, dim: int, device: Union[str, torch.device, None] = None,
                 dtype: torch.dtype = torch.float32) -> None:
        if num_classes <= 0 or dim <= 0:
            raise ValueError(f"num_classes and dim must be positive, got {num_classes}, {dim}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.sums = torch.zeros(self.num_classes, self.dim, device=device, dtype=dtype)
        self.counts = torch.zeros(self.num_classes, device=device, dtype=torch.int64)
        self.outside = torch.zeros((), device=device, dtype=torch.int64)  # labels out of range on a GPU

    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
        """Accumulate one batch: sums[y_k] += w_k f_k, counts[y_k] += 1.

        Args:
            features: (B, D) features (detached here).
            labels: (B,) class ids in 0..C−1.
            weights: (B,) clean probabilities w_k (any float dtype / device; moved here).

        Raises ValueError for labels outside 0..C−1: here for CPU labels, in :meth:`result` for GPU ones.
        """
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must have shape (B, {self.dim}), got {tuple(features.shape)}")
        n = features.shape[0]
        if labels.shape != (n,) or weights.shape != (n,):
            raise ValueError(f"labels and weights must have shape ({n},), got "
                             f"{tuple(labels.shape)} and {tuple(weights.shape)}")
        outside = (labels < 0) | (labels >= self.num_classes)
        if labels.device.type == "cpu" and n and bool(outside.any()):  # free to check here: no GPU sync
            self._refuse(labels)
        if labels.device.type != "cpu":  # checked once, in result(): reading it now would sync the GPU
            self.outside = self.outside + outside.sum().to(self.outside.device)
        labels = labels.to(self.sums.device).long().clamp(0, self.num_classes - 1)
        f = features.detach().to(self.sums.device, self.sums.dtype)
        w = weights.detach().to(self.sums.device, self.sums.dtype)
        self.sums.index_add_(0, labels, f * w.unsqueeze(1))
        self.counts.index_add_(0, labels, torch.ones_like(labels))  # bincount would sync on a GPU

    def _refuse(self, labels: Optional[torch.Tensor] = None) -> None:
        """Raise the ValueError of labels outside 0..C−1 (naming their range when given)."""
        seen = f"; got min {int(labels.min())}, max {int(labels.max())}" if labels is not None else ""
        raise ValueError(f"labels must lie in 0..{self.num_classes - 1}{seen}")

    @torch.no_grad()
    def result(self, old: Optional[torch.Tensor] = None) -> torch.Tensor:
        """New prototype table (C, D): Σ w f / count for seen classes, ``old`` rows elsewhere.

        Args:
            old: (C, D) previous table; zeros if None (prototypes start at zero).

        Returns:
            (C, D) tensor on the device/dtype of ``old`` (of the accumulator if ``old`` is None).
        """
        if old is None:
            old = torch.zeros_like(self.sums)
        if old.shape != self.sums.shape:
            raise ValueError(f"old must have shape {tuple(self.sums.shape)}, got {tuple(old.shape)}")
        if int(self.outside):  # one host read per pass
            self._refuse()
        seen = self.counts > 0
        # clamp only avoids 0/0 on unseen rows, which torch.where discards anyway.
        mean = self.sums / self.counts.clamp(min=1).unsqueeze(1).to(self.sums.dtype)
        new = torch.where(seen.unsqueeze(1), mean, old.to(self.sums.device, self.sums.dtype))
        return new.to(old.device, old.dtype)


@torch.no_grad()
def refresh_prototypes(old: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                       weights: torch.Tensor) -> torch.Tensor:
    """One-shot prototype refresh over a whole pass held in memory (method F.5 step 4).

    μ_new[c] = Σ_{k: y_k = c} w_k f_k / count_c for classes with count_c > 0, else μ_old[c].

    Args:
        old: (C, D) previous prototypes.
        features: (N, D) features of the whole pass (every visit, duplicates included).
        labels: (N,) class ids in 0..C−1.
        weights: (N,) clean probabilities.

    Returns:
        (C, D) new prototypes on the device/dtype of ``old``. ``old`` is not modified.
    """
    if old.dim() != 2:
        raise ValueError(f"old must be (C, D), got {tuple(old.shape)}")
    # Accumulate in at least float32 even if the table is half precision.
    acc_dtype = torch.float64 if old.dtype == torch.float64 else torch.float32
    acc = PrototypeAccumulator(old.shape[0], old.shape[1], device=old.device, dtype=acc_dtype)
    acc.add(features, labels, weights)
    return acc.result(old)
