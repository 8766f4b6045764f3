"""Batch samplers of both stages (method.md D.2 step 5, F.3).

All are *batch* samplers (iterables of index lists for ``DataLoader(batch_sampler=...)``); the
stage-2 ones yield ``(i_rgb, i_ir)`` tuples, the paired dataset's ``__getitem__`` key.

An epoch's *global* batch sequence depends only on ``(seed, epoch)`` (``numpy.random.default_rng``;
call :meth:`set_epoch` before each epoch). Every rank computes it and yields only its contiguous
slice of each global batch, so the rank slices concatenate to the ``world_size=1`` batch;
identity-structured batches are split only at identity boundaries (checked at construction).

This module is the public face; the code lives in :mod:`data.sampler_base` (shared rank slicing and
checks), :mod:`data.sampler_stage1` (:class:`RandomMultipleGallerySampler`) and :mod:`data.sampler_stage2`
(:class:`CrossModalIdentitySampler`, :class:`FullPassSampler`).
"""
from .sampler_base import Shard
from .sampler_stage1 import RandomMultipleGallerySampler
from .sampler_stage2 import CrossModalIdentitySampler, FullPassSampler

__all__ = ["RandomMultipleGallerySampler", "CrossModalIdentitySampler", "FullPassSampler", "Shard"]
