"""Tests of data/samplers.py: exact semantics on tiny label sets, plus a few statistics."""
import warnings

import numpy as np
import pytest
import torch

from data.samplers import CrossModalIdentitySampler, FullPassSampler, RandomMultipleGallerySampler, Shard

# ----------------------------------------------------------------------------------------------
# Stage-1 sampler fixture: id 0 has cams 1,1,1,2,2,3 (other-camera pool 3, 4 or 5 depending on the
# anchor); id 1 has five images of one camera; id 2 has cams 4,4,5 (pools 1 and 2); ids 3-6 are
# single images; label -1 marks outliers. Positions are shuffled so the sampler must sort.
_LABELS = [0] * 6 + [1] * 5 + [2] * 3 + [3, 4, 5, 6] + [-1] * 3
_CAMS = [1, 1, 1, 2, 2, 3] + [1] * 5 + [4, 4, 5] + [1, 2, 3, 4] + [1, 2, 3]
_PERM = np.random.default_rng(123).permutation(len(_LABELS))
LABELS = np.asarray(_LABELS)[_PERM]
CAMS = np.asarray(_CAMS)[_PERM]
NI = 4  # num_instances; one pass = 3 ids x 4 + 4 singles = 16 indices = one batch of 16


def _groups(batch, labels):
    """Split a one-pass batch into per-identity groups (a single-image id is a group of one)."""
    counts = np.bincount(labels[labels >= 0])
    out, k = [], 0
    while k < len(batch):
        size = 1 if counts[labels[batch[k]]] == 1 else NI
        out.append(batch[k:k + size])
        k += size
    return out


def _passes(camera_aware=True, epochs=400):
    sampler = RandomMultipleGallerySampler(LABELS, CAMS, batch_size=16, num_instances=NI, num_batches=1,
                                           camera_aware=camera_aware, seed=3)
    for e in range(epochs):
        sampler.set_epoch(e)
        (batch,) = list(sampler)
        yield batch


@pytest.mark.parametrize("camera_aware", [True, False])
def test_rmg_pass_structure(camera_aware):
    for batch in _passes(camera_aware, epochs=100):
        assert len(batch) == 16
        assert all(LABELS[i] >= 0 for i in batch)  # outliers are never emitted
        groups = _groups(batch, LABELS)
        ids = [LABELS[g[0]] for g in groups]
        assert sorted(ids) == list(range(7))  # every id exactly once per pass
        for g in groups:
            assert len(set(LABELS[g])) == 1
            assert g[0] not in g[1:]  # the anchor is never its own companion


def test_rmg_camera_aware_rules():
    dup_seen = {3: False, 1: False, 2: False}
    for batch in _passes(True):
        for g in _groups(batch, LABELS):
            anchor, comps = g[0], g[1:]
            same_id = np.flatnonzero(LABELS == LABELS[anchor])
            other_cam = same_id[CAMS[same_id] != CAMS[anchor]]
            if len(g) == 1:
                assert len(same_id) == 1
                continue
            pool = other_cam if other_cam.size else same_id[same_id != anchor]
            assert set(comps) <= set(pool.tolist())
            if pool.size >= NI:
                assert len(set(comps)) == NI - 1  # without replacement
            else:
                dup_seen[pool.size] |= len(set(comps)) < NI - 1
    # Pools of 1, 2 and 3 (= num_instances - 1, the released threshold) are drawn with replacement.
    assert all(dup_seen.values())


def test_rmg_camera_agnostic_uses_anchor_camera():
    same_cam_seen = False
    for batch in _passes(False, epochs=200):
        for g in _groups(batch, LABELS):
            same_cam_seen |= any(CAMS[c] == CAMS[g[0]] for c in g[1:])
            pool = np.flatnonzero(LABELS == LABELS[g[0]]).size - 1
            if pool >= NI:
                assert len(set(g[1:])) == NI - 1
    assert same_cam_seen


def test_rmg_uniform_anchor_companions_and_order():
    n = 1200
    anchors = {i: 0 for i in np.flatnonzero(LABELS == 0)}
    id1 = np.flatnonzero(LABELS == 1)
    comp_hits, first_ids = {i: 0 for i in id1}, np.zeros(7)
    n_id1 = 0
    for batch in _passes(True, epochs=n):
        groups = _groups(batch, LABELS)
        first_ids[LABELS[groups[0][0]]] += 1
        for g in groups:
            if LABELS[g[0]] == 0:
                anchors[g[0]] += 1
            if LABELS[g[0]] == 1:  # single camera: 3 of the 4 other images without replacement
                n_id1 += 1
                for c in g[1:]:
                    comp_hits[c] += 1
    assert np.allclose(np.array(list(anchors.values())) / n, 1 / 6, atol=0.04)
    assert np.allclose(first_ids / n, 1 / 7, atol=0.04)
    # Each image of id 1 is a companion with probability P(not anchor) * 3/4 = 4/5 * 3/4 = 3/5.
    assert np.allclose(np.array(list(comp_hits.values())) / n_id1, 3 / 5, atol=0.05)


def test_rmg_passes_restart_and_drop_partial_batch():
    labels = np.repeat(np.arange(3), 5)  # 3 ids x 4 instances = 12 indices per pass -> 1 batch of 8
    s = RandomMultipleGallerySampler(labels, np.arange(15) % 2, batch_size=8, num_instances=4,
                                     num_batches=5, seed=0)
    assert s.pass_length == 12 and s.batches_per_pass == 1 and len(s) == 5
    for e in range(40):
        s.set_epoch(e)
        batches = list(s)
        assert len(batches) == 5 and all(len(b) == 8 for b in batches)
        for b in batches:
            # Each batch is the start of a fresh pass: two complete groups of two DIFFERENT ids.
            # (A continuous stream would put the third id of one pass next to the first of the next.)
            ids = labels[b]
            assert len(set(ids[:4])) == 1 and len(set(ids[4:])) == 1 and ids[0] != ids[4]


def test_rmg_default_num_batches_and_determinism():
    labels = np.repeat(np.arange(10), 6)
    cams = np.tile(np.arange(3), 20)
    s = RandomMultipleGallerySampler(labels, cams, batch_size=8, num_instances=4, seed=5)
    assert len(s) == 40 // 8 == len(list(s))
    t = RandomMultipleGallerySampler(labels, cams, batch_size=8, num_instances=4, seed=5)
    assert list(s) == list(t)
    s.set_epoch(1)
    assert list(s) != list(t)
    t.set_epoch(1)
    assert list(s) == list(t)
    u = RandomMultipleGallerySampler(labels, cams, batch_size=8, num_instances=4, seed=6)
    u.set_epoch(1)
    assert list(u) != list(s)


def test_rmg_rank_slices_concatenate():
    labels = np.repeat(np.arange(12), 5)
    cams = np.tile(np.arange(2), 30)
    kw = dict(batch_size=16, num_instances=4, num_batches=7, seed=9)
    full = RandomMultipleGallerySampler(labels, cams, **kw)
    parts = [RandomMultipleGallerySampler(labels, cams, shard=Shard(r, 2), **kw) for r in range(2)]
    for p in [full] + parts:
        p.set_epoch(4)
    a, b = list(parts[0]), list(parts[1])
    assert len(a) == len(b) == 7 and all(len(x) == 8 for x in a)
    assert [x + y for x, y in zip(a, b)] == list(full)


def test_rmg_errors():
    with pytest.raises(ValueError, match="no sample has a pseudo-label"):
        RandomMultipleGallerySampler([-1, -1], [0, 1], batch_size=4, num_instances=2)
    with pytest.raises(ValueError, match="multiple of world_size \\(2\\) x num_instances \\(4\\) = 8"):
        RandomMultipleGallerySampler(np.repeat(np.arange(8), 4), np.zeros(32, int), batch_size=12,
                                     num_instances=4, shard=Shard(0, 2))
    with pytest.raises(ValueError, match="fewer than one batch"):
        RandomMultipleGallerySampler([0, 0, 1, 1], [0, 1, 0, 1], batch_size=16, num_instances=4)
    with pytest.raises(ValueError, match="cams is required"):
        RandomMultipleGallerySampler([0, 0], None, batch_size=2, num_instances=2)
    with pytest.raises(ValueError, match="rank"):
        RandomMultipleGallerySampler([0, 0], [0, 1], batch_size=2, num_instances=2, shard=Shard(2, 2))


# ----------------------------------------------------------------------------------------------
# Stage-2 identity sampler. Classes: 0-4 have >= 4 samples in both modalities; 5 has 2 rgb samples;
# 6 exists only in rgb; 7 only in ir; -1 is ignored.
def _xm_labels():
    rgb = np.r_[np.repeat(np.arange(5), [4, 5, 6, 4, 8]), [5, 5], [6] * 6, [-1] * 3]
    ir = np.r_[np.repeat(np.arange(5), [5, 4, 4, 7, 4]), [5] * 5, [7] * 5, [-1] * 2]
    rng = np.random.default_rng(0)
    return rng.permutation(rgb), rng.permutation(ir)


def test_xm_batches_grouped_by_identity():
    rgb, ir = _xm_labels()
    s = CrossModalIdentitySampler(rgb, ir, batch_ids=3, num_pos=4, num_batches=300, seed=1)
    assert s.eligible_classes.tolist() == [0, 1, 2, 3, 4]
    hits, dup = np.zeros(8), False
    for batch in s:
        assert len(batch) == 12 and all(isinstance(p, tuple) and len(p) == 2 for p in batch)
        yr = np.array([rgb[i] for i, _ in batch]).reshape(3, 4)
        yi = np.array([ir[j] for _, j in batch]).reshape(3, 4)
        assert (yr == yi).all() and (yr == yr[:, :1]).all()  # pairs share the class; blocks of num_pos
        assert len(set(yr[:, 0])) == 3  # distinct classes within a batch
        hits[yr[:, 0]] += 1
        dup |= any(len(set(i for i, _ in batch[4 * k:4 * k + 4])) < 4 for k in range(3))
    assert dup  # indices within a class are drawn with replacement
    assert np.allclose(hits[:5] / 300, 3 / 5, atol=0.08) and hits[5:].sum() == 0


def test_xm_default_length_and_rank_slices():
    rgb, ir = _xm_labels()
    s = CrossModalIdentitySampler(rgb, ir, batch_ids=2, num_pos=2)
    assert len(s) == max(35, 34) // 4 + 1  # labelled counts only (-1 excluded)
    parts = [CrossModalIdentitySampler(rgb, ir, batch_ids=2, num_pos=2, rank=r, world_size=2) for r in (0, 1)]
    for p in [s] + parts:
        p.set_epoch(3)
    assert [a + b for a, b in zip(*map(list, parts))] == list(s)
    with pytest.raises(ValueError, match="--batch-ids 3 must be a multiple of world_size"):
        CrossModalIdentitySampler(rgb, ir, batch_ids=3, num_pos=2, world_size=2)


def test_xm_fallback_warning_and_errors():
    rgb, ir = _xm_labels()
    with pytest.warns(RuntimeWarning, match="only 5 pseudo-identities have >= 4"):
        s = CrossModalIdentitySampler(rgb, ir, batch_ids=6, num_pos=4, num_batches=50)
    assert s.eligible_classes.tolist() == [0, 1, 2, 3, 4, 5]
    for batch in s:
        assert sorted(set(rgb[i] for i, _ in batch)) == [0, 1, 2, 3, 4, 5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CrossModalIdentitySampler(rgb, ir, batch_ids=5, num_pos=4)  # enough full classes: no warning
    msg = "only 6 pseudo-identities have both rgb and ir samples; need --batch-ids"
    with pytest.raises(ValueError, match=msg):
        CrossModalIdentitySampler(rgb, ir, batch_ids=7, num_pos=4)


def test_xm_determinism():
    rgb, ir = _xm_labels()
    a = CrossModalIdentitySampler(rgb, ir, batch_ids=3, num_pos=2, seed=4)
    b = CrossModalIdentitySampler(rgb, ir, batch_ids=3, num_pos=2, seed=4)
    assert list(a) == list(b)
    a.set_epoch(2)
    assert list(a) != list(b)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_rgb,n_ir,bs", [(10, 23, 4), (50, 7, 6), (24, 24, 24)])
def test_full_pass_covers_everything(n_rgb, n_ir, bs):
    s = FullPassSampler(n_rgb, n_ir, batch_size=bs, seed=2)
    batches = list(s)
    assert len(batches) == len(s) == -(-max(n_rgb, n_ir) // bs)
    assert all(len(b) == bs for b in batches)
    pairs = np.array([p for b in batches for p in b])
    for col, n in ((0, n_rgb), (1, n_ir)):
        counts = np.bincount(pairs[:, col], minlength=n)
        assert counts.size == n and counts.min() >= 1  # every sample visited
        assert counts.max() - counts.min() <= 1  # padding without replacement where possible


def test_full_pass_unrelated_pairs_determinism_and_ranks():
    s = FullPassSampler(300, 300, batch_size=12, seed=0)
    pairs = np.array([p for b in s for p in b])
    assert (pairs[:, 0] == pairs[:, 1]).mean() < 0.05  # independent shuffles
    t = FullPassSampler(300, 300, batch_size=12, seed=0)
    assert list(s) == list(t)
    t.set_epoch(1)
    assert list(s) != list(t)
    parts = [FullPassSampler(300, 300, batch_size=12, seed=0, rank=r, world_size=3) for r in range(3)]
    assert [a + b + c for a, b, c in zip(*map(list, parts))] == list(s)
    with pytest.raises(ValueError, match="batch size 12 must be a multiple of world_size \\(5\\)"):
        FullPassSampler(10, 10, batch_size=12, world_size=5)
    with pytest.raises(ValueError, match="n_ir"):
        FullPassSampler(10, 0)


def test_full_pass_padding_spread_over_the_pass():
    # The padding is shuffled together with the permutation (released: extras appended, then the
    # whole list shuffled), so the repeated indices are not all in the last batch.
    s = FullPassSampler(20, 25, batch_size=5, seed=0)
    confined = []
    for e in range(10):
        s.set_epoch(e)
        first = [i for b in list(s)[:4] for i, _ in b]
        confined.append(len(set(first)) == 20)
    assert not all(confined)


def test_samplers_drive_a_dataloader():
    class Echo(torch.utils.data.Dataset):
        def __getitem__(self, key):
            return torch.tensor(key)

        def __len__(self):
            return 100

    rgb, ir = _xm_labels()
    loader = torch.utils.data.DataLoader(Echo(), batch_sampler=CrossModalIdentitySampler(rgb, ir, 2, 2))
    batch = next(iter(loader))
    assert batch.shape == (4, 2) and (rgb[batch[:, 0]] == ir[batch[:, 1]]).all()
    loader = torch.utils.data.DataLoader(Echo(), batch_sampler=RandomMultipleGallerySampler(
        LABELS, CAMS, batch_size=16, num_instances=NI))
    assert [b.shape for b in loader] == [(16,)]
