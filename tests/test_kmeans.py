"""Tests of clustering.kmeans.batched_kmeans against sklearn.cluster.KMeans (method E.1)."""
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from clustering.kmeans import batched_kmeans


def _grouped_data(sizes, dim, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((int(np.sum(sizes)), dim)).astype(dtype)
    g = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(g))            # groups interleaved, not contiguous
    return x[perm], g[perm]


def _sorted_rows(c):
    c = np.asarray(c, dtype=np.float64)
    return c[np.lexsort(c.T[::-1])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_sklearn_per_group(dtype):
    sizes = [4, 5, 7, 9, 12, 17, 23, 31, 40, 55, 64, 80]
    x, g = _grouped_data(sizes, 24, seed=1, dtype=dtype)
    centers, inertia = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g))
    assert centers.shape == (len(sizes), 4, 24) and centers.dtype == torch.from_numpy(x).dtype
    identical = 0
    for i in range(len(sizes)):
        km = KMeans(n_clusters=4, n_init=10, random_state=0).fit(x[g == i])
        ours = float(inertia[i])
        # within 1e-3 relative of sklearn, or better
        assert ours <= km.inertia_ * (1 + 1e-3) + 1e-9, (i, ours, km.inertia_)
        identical += np.allclose(_sorted_rows(centers[i]), _sorted_rows(km.cluster_centers_), atol=1e-4)
    # the seeding replays sklearn's random stream, so (almost) every group is identical
    assert identical >= len(sizes) - 1


def test_inertia_is_kmeans_objective():
    x, g = _grouped_data([30, 45], 8, seed=2)
    centers, inertia = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g))
    for i in range(2):
        d = ((x[g == i][:, None, :] - centers[i].numpy()[None]) ** 2).sum(-1)
        assert d.min(1).sum() == pytest.approx(float(inertia[i]), rel=1e-4)


def test_max_iter_one_matches_sklearn():
    x, g = _grouped_data([50, 70], 6, seed=3)
    centers, inertia = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g), max_iter=1)
    for i in range(2):
        km = KMeans(n_clusters=4, n_init=10, random_state=0, max_iter=1).fit(x[g == i])
        assert float(inertia[i]) == pytest.approx(km.inertia_, rel=1e-4)


def test_well_separated_partition():
    rng = np.random.default_rng(4)
    xs, gs, truth = [], [], []
    for grp in range(5):
        means = rng.standard_normal((4, 16)) * 10.0
        lab = rng.integers(0, 4, size=40)
        lab[:4] = np.arange(4)
        xs.append(means[lab] + 0.1 * rng.standard_normal((40, 16)))
        gs.append(np.full(40, grp))
        truth.append(lab)
    x = np.concatenate(xs).astype(np.float32)
    g = np.concatenate(gs)
    centers, _ = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g))
    for grp in range(5):
        pts = x[g == grp]
        ours = ((pts[:, None] - centers[grp].numpy()[None]) ** 2).sum(-1).argmin(1)
        sk = KMeans(n_clusters=4, n_init=10, random_state=0).fit(pts).labels_
        assert adjusted_rand_score(sk, ours) == 1.0
        assert adjusted_rand_score(truth[grp], ours) == 1.0


def test_small_group_fallback():
    rng = np.random.default_rng(5)
    sizes = [1, 2, 3, 10]
    x = rng.standard_normal((sum(sizes), 5)).astype(np.float32)
    g = np.repeat(np.arange(4), sizes)
    centers, inertia = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g), k=4)
    for i, m in enumerate(sizes[:3]):
        members = x[g == i]
        np.testing.assert_array_equal(centers[i].numpy(), members[np.arange(4) % m])
        assert float(inertia[i]) == 0.0
    assert float(inertia[3]) > 0


def test_determinism_and_seed():
    x, g = _grouped_data([20, 33, 47], 12, seed=6)
    a = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g), seed=3)
    b = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g), seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for i in range(3):
        km = KMeans(n_clusters=4, n_init=10, random_state=3).fit(x[g == i])
        assert float(a[1][i]) <= km.inertia_ * (1 + 1e-3)


def test_duplicate_points_and_few_restarts():
    x = np.repeat(np.eye(3, 6, dtype=np.float32), 4, axis=0)     # 3 distinct points, 12 rows, k=4
    g = np.zeros(12, dtype=np.int64)
    centers, inertia = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g), n_init=2)
    assert torch.isfinite(centers).all()
    assert float(inertia[0]) == pytest.approx(0.0, abs=1e-6)
    rows = {tuple(r) for r in centers[0].numpy().round(5)}
    assert rows <= {tuple(r) for r in x}


def test_empty_group_is_an_error():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="empty group"):
        batched_kmeans(x, torch.tensor([0, 0, 2, 2, 2]))
    with pytest.raises(ValueError):
        batched_kmeans(x, torch.tensor([0, 0, -2, 1, 1]))
    with pytest.raises(ValueError):
        batched_kmeans(x, torch.full((5,), -1))


def test_rows_with_group_minus_one_are_ignored():
    x, g = _grouped_data([9, 14, 6], 5, seed=7)
    g_out = g.copy()
    g_out[::4] = -1
    keep = g_out >= 0
    a = batched_kmeans(torch.from_numpy(x), torch.from_numpy(g_out))
    b = batched_kmeans(torch.from_numpy(x[keep]), torch.from_numpy(g_out[keep]))
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
