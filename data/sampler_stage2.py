"""The stage-2 batch samplers (method.md F.3): identity batches over paired modalities
(:class:`CrossModalIdentitySampler`) and the full pass with unrelated pairs (:class:`FullPassSampler`).
Both yield ``(i_rgb, i_ir)`` tuples; see :mod:`data.samplers` for the conventions all samplers share.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np

from .sampler_base import as_int_array, check_positive, RankSlicedBatchSampler


def _class_members(labels: np.ndarray, classes: np.ndarray):
    """Dataset indices of ``classes`` (sorted) grouped by class: ``(order, start, count)``.

    The members of ``classes[c]`` are ``order[start[c]:start[c] + count[c]]``.
    """
    idx = np.flatnonzero(np.isin(labels, classes))
    order = idx[np.argsort(labels[idx], kind="stable")]
    sorted_labels = labels[order]
    start = np.searchsorted(sorted_labels, classes, side="left")
    count = np.searchsorted(sorted_labels, classes, side="right") - start
    return order, start, count


class CrossModalIdentitySampler(RankSlicedBatchSampler):
    """Stage-2 identity sampler over paired modalities (method.md F.3, IdentitySampler).

    Each global batch has ``batch_ids`` distinct classes (drawn without replacement from the eligible
    classes); for each class ``num_pos`` RGB and ``num_pos`` IR indices are drawn with replacement.
    The batch is a list of ``batch_ids * num_pos`` tuples ``(i_rgb, i_ir)`` grouped by class: element
    j pairs the j-th RGB and the j-th IR index, which share the class.

    Eligible classes: labels present in both modalities with >= ``num_pos`` samples in each (the
    released re-draw rule, without its duplicates). If fewer than ``batch_ids`` such classes exist,
    every class present in both modalities becomes eligible (with a warning). Negative labels are
    ignored.

    Args:
        labels_rgb, labels_ir: (N_rgb,), (N_ir,) pseudo-labels of the two training sets.
        batch_ids: classes per batch (``--batch-ids``, 6 released); a multiple of ``world_size``.
        num_pos: samples per class and modality (``--num-pos``, 4 released).
        num_batches: batches per epoch; default ``floor(max(N_rgb, N_ir) / (batch_ids*num_pos)) + 1``
            (released), N counting labelled samples.
        seed, rank, world_size: see the module docstring.
    """

    def __init__(self, labels_rgb: Sequence[int], labels_ir: Sequence[int], batch_ids: int = 6,
                 num_pos: int = 4, num_batches: Optional[int] = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        check_positive(batch_ids=batch_ids, num_pos=num_pos, world_size=world_size)
        if batch_ids % world_size:
            raise ValueError(f"--batch-ids {batch_ids} must be a multiple of world_size ({world_size}), "
                             "so that every rank gets whole identities")
        labels_rgb = as_int_array(labels_rgb, "labels_rgb")
        labels_ir = as_int_array(labels_ir, "labels_ir")
        self.batch_ids, self.num_pos = int(batch_ids), int(num_pos)
        self._eligible = self._choose_eligible(labels_rgb, labels_ir)
        self._rgb = _class_members(labels_rgb, self._eligible)
        self._ir = _class_members(labels_ir, self._eligible)
        if num_batches is None:
            n = max(int(np.sum(labels_rgb >= 0)), int(np.sum(labels_ir >= 0)))
            num_batches = n // (self.batch_ids * self.num_pos) + 1
        super().__init__(self.batch_ids * self.num_pos, num_batches, seed, rank, world_size,
                         self.num_pos, "num_pos")

    def _choose_eligible(self, labels_rgb: np.ndarray, labels_ir: np.ndarray) -> np.ndarray:
        """Sorted label values the sampler draws from (see the class docstring)."""
        cls_rgb, cnt_rgb = np.unique(labels_rgb[labels_rgb >= 0], return_counts=True)
        cls_ir, cnt_ir = np.unique(labels_ir[labels_ir >= 0], return_counts=True)
        common, pos_rgb, pos_ir = np.intersect1d(cls_rgb, cls_ir, assume_unique=True,
                                                 return_indices=True)
        if common.size < self.batch_ids:
            raise ValueError(f"only {common.size} pseudo-identities have both rgb and ir samples; need "
                             f"--batch-ids <= {common.size} (got {self.batch_ids}), or better pseudo-labels")
        full = common[(cnt_rgb[pos_rgb] >= self.num_pos) & (cnt_ir[pos_ir] >= self.num_pos)]
        if full.size >= self.batch_ids:
            return full
        warnings.warn(f"only {full.size} pseudo-identities have >= {self.num_pos} samples in both "
                      f"modalities (fewer than --batch-ids {self.batch_ids}); sampling from all "
                      f"{common.size} identities present in both modalities instead", RuntimeWarning)
        return common

    @property
    def eligible_classes(self) -> np.ndarray:
        """Sorted label values that batches are drawn from, shape (C,)."""
        return self._eligible.copy()

    def _global_batches(self, rng: np.random.Generator) -> np.ndarray:
        """(num_batches, batch_ids*num_pos, 2) array of (rgb, ir) index pairs."""
        shape = (self.num_batches, self.batch_ids, self.num_pos)
        # B distinct classes per batch: the first B of a random ordering of the classes.
        keys = rng.random((self.num_batches, self._eligible.size))
        cls = np.argsort(keys, axis=1)[:, :self.batch_ids, None]
        picked = []
        for order, start, count in (self._rgb, self._ir):
            draw = rng.integers(0, count[cls], size=shape)  # with replacement, as released
            picked.append(order[start[cls] + draw])
        return np.stack(picked, axis=-1).reshape(self.num_batches, self.global_batch, 2)


class FullPassSampler(RankSlicedBatchSampler):
    """One pass over both modalities with unrelated (rgb, ir) pairs (method.md F.3, AllSampler).

    Warm-up epochs and clean-probability (GMM) pass. Each modality gets a list of length
    ``L = ceil(max(n_rgb, n_ir) / batch_size) * batch_size``: a random permutation of all its indices
    padded to ``L`` with further random indices (from further permutations, i.e. without replacement
    as long as possible), then shuffled; the two lists are independent. Yields lists of
    ``batch_size`` tuples ``(i_rgb, i_ir)`` (this rank's slice of them).

    No batch is dropped, so every sample is visited at least once per pass. This fixes a released
    quirk: with ``drop_last`` some samples went unvisited, their loss stayed -1 and distorted the
    min-max normalisation before the GMM fit (F.5).
    """

    def __init__(self, n_rgb: int, n_ir: int, batch_size: int = 24, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        check_positive(n_rgb=n_rgb, n_ir=n_ir, batch_size=batch_size)
        self.n_rgb, self.n_ir = int(n_rgb), int(n_ir)
        num_batches = math.ceil(max(self.n_rgb, self.n_ir) / batch_size)
        super().__init__(batch_size, num_batches, seed, rank, world_size)

    @staticmethod
    def _padded_permutation(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        """(length,) shuffled indices of range(n): each index ceil or floor(length/n) times."""
        reps = math.ceil(length / n)
        tiles = rng.permuted(np.tile(np.arange(n), (reps, 1)), axis=1).ravel()[:length]
        return rng.permutation(tiles)

    def _global_batches(self, rng: np.random.Generator) -> np.ndarray:
        """(num_batches, batch_size, 2) array of (rgb, ir) index pairs."""
        length = self.num_batches * self.global_batch
        rgb = self._padded_permutation(rng, self.n_rgb, length)
        ir = self._padded_permutation(rng, self.n_ir, length)
        return np.stack([rgb, ir], axis=-1).reshape(self.num_batches, self.global_batch, 2)
