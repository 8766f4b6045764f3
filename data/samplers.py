"""Batch samplers of both stages (method.md D.2 step 5, F.3).

All are *batch* samplers (iterables of index lists for ``DataLoader(batch_sampler=...)``); the
stage-2 ones yield ``(i_rgb, i_ir)`` tuples, the paired dataset's ``__getitem__`` key.

An epoch's *global* batch sequence depends only on ``(seed, epoch)`` (``numpy.random.default_rng``;
call :meth:`set_epoch` before each epoch). Every rank computes it and yields only its contiguous
slice of each global batch, so the rank slices concatenate to the ``world_size=1`` batch;
identity-structured batches are split only at identity boundaries (checked at construction).
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler


def _as_int_array(x: Sequence[int], name: str) -> np.ndarray:
    """``x`` as a 1-D int64 array, or ValueError naming ``name``."""
    arr = np.asarray(x)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of integers, got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_positive(**values: int) -> None:
    """Raise ValueError for the first argument that is not a positive integer."""
    for name, v in values.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")


class _RankSlicedBatchSampler(Sampler):
    """Shared machinery: (seed, epoch) determinism, rank slicing, length.

    Subclasses implement :meth:`_global_batches`, returning an int array of shape
    ``(num_batches, global_batch)`` (indices) or ``(num_batches, global_batch, 2)`` (rgb/ir pairs).
    ``unit`` (named ``unit_name`` in errors) is the per-identity group size: the per-rank slice must
    be a multiple of it, so that no identity is split between ranks.
    """

    def __init__(self, global_batch: int, num_batches: int, seed: int, rank: int, world_size: int,
                 unit: int = 1, unit_name: str = ""):
        super().__init__()
        _check_positive(world_size=world_size, num_batches=num_batches)
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


class RandomMultipleGallerySampler(_RankSlicedBatchSampler):
    """Stage-1 P x K sampler of one modality, camera aware (method.md D.2 step 5).

    One *pass* visits every pseudo-identity once, in random order, and emits for it one random anchor
    followed by ``num_instances - 1`` images of the same identity taken by *other* cameras than the
    anchor's (without replacement if there are >= ``num_instances`` of them, else with replacement).
    An identity without other-camera images draws from its other images (anchor excluded, same rule);
    a single-image identity emits only its anchor. ``camera_aware=False`` always uses the second rule.
    The index stream of consecutive passes is cut into global batches of ``batch_size``, the final
    partial batch of every pass being dropped (released DataLoader ``drop_last`` + restarting
    iterator); exactly ``num_batches`` batches are produced per epoch.

    Single-image identities (rare: DBSCAN min_samples is 4) shift the P x K alignment of the stream
    as in the released code, so a batch may then split an identity.

    Args:
        labels: (N,) pseudo-labels; samples with a negative label (DBSCAN outliers) are never drawn.
        cams: (N,) camera ids (may be None when ``camera_aware`` is False).
        batch_size: global batch size (128 released); a multiple of ``num_instances * world_size``.
        num_instances: images per identity and pass (16 released).
        num_batches: batches per epoch (``--iters``); default: the full batches of one pass.
        camera_aware: draw the companions from other cameras (released default; ``--no-cam`` = False).
        seed, rank, world_size: see the module docstring.
    """

    def __init__(self, labels: Sequence[int], cams: Optional[Sequence[int]], batch_size: int = 128,
                 num_instances: int = 16, num_batches: Optional[int] = None, camera_aware: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        _check_positive(batch_size=batch_size, num_instances=num_instances)
        labels = _as_int_array(labels, "labels")
        if cams is None:
            if camera_aware:
                raise ValueError("cams is required when camera_aware=True")
            cams = np.zeros_like(labels)
        cams = _as_int_array(cams, "cams")
        if cams.shape != labels.shape:
            raise ValueError(f"labels and cams differ in length ({labels.size} vs {cams.size})")
        self.num_instances, self.camera_aware = int(num_instances), bool(camera_aware)
        self._index_tables(labels, cams)
        n_single = int(np.sum(self._id_count == 1))
        # Every multi-image identity emits exactly num_instances indices, so a pass has a fixed length.
        self.pass_length = n_single + self.num_instances * (self._id_count.size - n_single)
        self.batches_per_pass = self.pass_length // batch_size
        if self.batches_per_pass == 0:
            raise ValueError(f"one pass over the {self._id_count.size} pseudo-identities yields only "
                             f"{self.pass_length} indices, fewer than one batch of {batch_size}; "
                             "lower the batch size")
        if num_batches is None:
            num_batches = self.batches_per_pass
        super().__init__(batch_size, num_batches, seed, rank, world_size, self.num_instances,
                         "num_instances")

    def _index_tables(self, labels: np.ndarray, cams: np.ndarray) -> None:
        """Sort the labelled samples by (label, camera) and record identity and camera blocks.

        ``_order[k]`` is the dataset index at sorted position k; every identity is the block
        ``[_id_start, _id_start + _id_count)`` and, within it, every camera is a contiguous block
        (``_cam_start[k]``, ``_cam_len[k]`` = the camera block of sorted position k).
        """
        valid = np.flatnonzero(labels >= 0)
        if valid.size == 0:
            raise ValueError("no sample has a pseudo-label (all are outliers, label -1): clustering "
                             "produced no cluster, nothing to train on")
        key_cam = cams[valid] if self.camera_aware else np.zeros(valid.size, np.int64)
        self._order = valid[np.lexsort((key_cam, labels[valid]))]
        lab = labels[self._order]
        cam = cams[self._order] if self.camera_aware else np.zeros_like(lab)
        _, self._id_start, self._id_count = np.unique(lab, return_index=True, return_counts=True)
        new_block = np.r_[True, (lab[1:] != lab[:-1]) | (cam[1:] != cam[:-1])]
        block_start = np.flatnonzero(new_block)
        block_len = np.diff(np.r_[block_start, lab.size])
        block_of = np.cumsum(new_block) - 1
        self._cam_start, self._cam_len = block_start[block_of], block_len[block_of]

    def _holes(self, anchor: np.ndarray):
        """Per identity, the contiguous block of sorted positions the companions must avoid.

        Camera aware: the anchor's camera block, unless it is the whole identity (no other camera);
        otherwise just the anchor. Returns ``(hole_start, hole_len)``, both (K,).
        """
        if not self.camera_aware:
            return anchor, np.ones_like(anchor)
        start, length = self._cam_start[anchor], self._cam_len[anchor]
        no_other_cam = length == self._id_count
        return np.where(no_other_cam, anchor, start), np.where(no_other_cam, 1, length)

    def _one_pass(self, rng: np.random.Generator) -> np.ndarray:
        """Index stream of one pass over all identities, shape (pass_length,)."""
        start, count = self._id_start, self._id_count
        m = self.num_instances - 1
        anchor = rng.integers(start, start + count)
        hole_start, hole_len = self._holes(anchor)
        pool = count - hole_len  # companions available per identity
        picks = np.zeros((count.size, m), np.int64)
        # Small pools (1 <= pool < num_instances): with replacement; offset k in the pool maps to the
        # sorted position start + k, skipping over the hole.
        small = (pool > 0) & (pool < self.num_instances)
        k = rng.integers(0, pool[small, None], size=(int(small.sum()), m))
        skip = (k >= (hole_start - start)[small, None]) * hole_len[small, None]
        picks[small] = start[small, None] + k + skip
        # Large pools: without replacement. Random keys on every sorted position, holes pushed last,
        # then the first m positions of each identity after sorting by (identity, key).
        large = pool >= self.num_instances
        if large.any():
            edges = np.zeros(self._order.size + 1, np.int64)
            np.add.at(edges, hole_start, 1)
            np.add.at(edges, hole_start + hole_len, -1)
            keys = rng.random(self._order.size) + (np.cumsum(edges[:-1]) > 0)
            ranked = np.lexsort((keys, np.repeat(np.arange(count.size), count)))
            picks[large] = ranked[start[large, None] + np.arange(m)]
        rows = np.hstack([anchor[:, None], picks])
        keep = np.hstack([np.ones((count.size, 1), bool), np.repeat((pool > 0)[:, None], m, axis=1)])
        perm = rng.permutation(count.size)
        return self._order[rows[perm][keep[perm]]]

    def _global_batches(self, rng: np.random.Generator) -> np.ndarray:
        """(num_batches, batch_size) dataset indices: successive passes, each cut to full batches."""
        usable = self.batches_per_pass * self.global_batch
        passes = math.ceil(self.num_batches / self.batches_per_pass)
        stream = np.concatenate([self._one_pass(rng)[:usable] for _ in range(passes)])
        return stream[:self.num_batches * self.global_batch].reshape(self.num_batches, self.global_batch)


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


class CrossModalIdentitySampler(_RankSlicedBatchSampler):
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
        _check_positive(batch_ids=batch_ids, num_pos=num_pos, world_size=world_size)
        if batch_ids % world_size:
            raise ValueError(f"--batch-ids {batch_ids} must be a multiple of world_size ({world_size}), "
                             "so that every rank gets whole identities")
        labels_rgb = _as_int_array(labels_rgb, "labels_rgb")
        labels_ir = _as_int_array(labels_ir, "labels_ir")
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


class FullPassSampler(_RankSlicedBatchSampler):
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
        _check_positive(n_rgb=n_rgb, n_ir=n_ir, batch_size=batch_size)
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
