"""Shared machinery of the batch samplers (see :mod:`data.samplers`), used by data/sampler_stage1.py and
data/sampler_stage2.py: the argument checks (:func:`as_int_array`, :func:`check_positive`), the
(rank, world_size) pair :class:`Shard` and the rank-sliced base class (:class:`RankSlicedBatchSampler`) that gives every sampler its (seed, epoch)
determinism, its per-rank slice of each global batch and its length.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
from torch.utils.data import Sampler


def as_int_array(x: Sequence[int], name: str) -> np.ndarray:
    """``x`` as a 1-D int64 array, or ValueError naming ``name``."""
    arr = np.asarray(x)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of integers, got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_positive(**values: int) -> None:
    """Raise ValueError for the first argument that is not a positive integer."""
    for name, v in values.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")


class Shard(NamedTuple):
    """This process's share of every global batch under torchrun: the slice ``rank`` of ``world_size``
    equal, contiguous slices (the default: one process takes the whole batch)."""

    rank: int = 0
    world_size: int = 1


class RankSlicedBatchSampler(Sampler):
    """Shared machinery: (seed, epoch) determinism, rank slicing, length.

    Subclasses implement :meth:`_global_batches`, returning an int array of shape
    ``(num_batches, global_batch)`` (indices) or ``(num_batches, global_batch, 2)`` (rgb/ir pairs).
    ``unit`` (named ``unit_name`` in errors) is the per-identity group size: the per-rank slice must
    be a multiple of it, so that no identity is split between ranks.
    """

    def __init__(self, global_batch: int, num_batches: int, seed: int, rank: int, world_size: int,
                 unit: int = 1, unit_name: str = ""):
        super().__init__()
        check_positive(world_size=world_size, num_batches=num_batches)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if global_batch % (world_size * unit):
            detail = f" x {unit_name} ({unit}) = {world_size * unit}" if unit > 1 else ""
            raise ValueError(f"batch size {global_batch} must be a multiple of world_size "
                             f"({world_size}){detail}, so that every rank gets an equal share"
                             + (" of whole identities" if unit > 1 else ""))
        self.global_batch = int(global_batch)
        self.num_batches = int(num_batches)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.per_rank = self.global_batch // self.world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batch sequence the next ``iter()`` produces."""
        self.epoch = int(epoch)

    def _global_batches(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list]:
        batches = self._global_batches(np.random.default_rng([self.seed, self.epoch]))
        lo = self.rank * self.per_rank
        for batch in batches[:, lo:lo + self.per_rank].tolist():
            # Pairs come out of tolist() as lists; the dataset key is a hashable (i_rgb, i_ir) tuple.
            yield list(map(tuple, batch)) if batches.ndim == 3 else batch

    def __len__(self) -> int:
        return self.num_batches
