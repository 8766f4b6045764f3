"""The stage-1 batch sampler (method.md D.2 step 5): P x K batches of one modality, camera aware.
See :mod:`data.samplers` for the conventions all samplers share.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .sampler_base import as_int_array, check_positive, RankSlicedBatchSampler, Shard


class RandomMultipleGallerySampler(RankSlicedBatchSampler):
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
        seed: see the module docstring.
        shard: this process's (rank, world_size) (:class:`data.sampler_base.Shard`; see the module
            docstring); default: a single process.
    """

    def __init__(self, labels: Sequence[int], cams: Optional[Sequence[int]], batch_size: int = 128,
                 num_instances: int = 16, num_batches: Optional[int] = None, camera_aware: bool = True,
                 seed: int = 0, shard: Shard = Shard()):
        check_positive(batch_size=batch_size, num_instances=num_instances)
        labels = as_int_array(labels, "labels")
        if cams is None:
            if camera_aware:
                raise ValueError("cams is required when camera_aware=True")
            cams = np.zeros_like(labels)
        cams = as_int_array(cams, "cams")
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
        super().__init__(batch_size, num_batches, seed, shard.rank, shard.world_size, self.num_instances,
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
