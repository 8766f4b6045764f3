"""Tests of clustering.dbscan: sparse DBSCAN == dense DBSCAN, blob recovery, helpers, benchmark script."""
import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from clustering.dbscan import cluster_stats, neighbourhood_graph, pseudo_labels
from clustering.jaccard import compute_jaccard_distance


def gaussian_blobs(sizes, dim=32, spread=0.15, n_outliers=0, seed=0):
    """L2-normalised features of well-separated blobs (+ isolated outliers); labels −1 for outliers."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = [c + spread / np.sqrt(dim) * rng.standard_normal((s, dim)) for c, s in zip(centres, sizes)]
    y = [np.full(s, i) for i, s in enumerate(sizes)]
    x.append(rng.standard_normal((n_outliers, dim)))
    y.append(np.full(n_outliers, -1))
    x, y = np.concatenate(x), np.concatenate(y)
    perm = rng.permutation(len(y))
    x = x[perm] / np.linalg.norm(x[perm], axis=1, keepdims=True)
    return x.astype(np.float32), y[perm]


def dense_labels(f, eps, k1=30, k2=6, modality=None, min_samples=4):
    """The released code's path: sklearn DBSCAN on the dense Jaccard matrix."""
    d = compute_jaccard_distance(f, k1, k2, modality=modality)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(d)


def test_sklearn_sparse_precomputed_semantics():
    """Stored entries (explicit zeros included) are neighbour candidates, missing entries are not."""
    # 0-1 stored as explicit 0, 1-2 stored 0.5, 2-3 missing, 3-4 stored 0.2; eps 0.5, min_samples 2
    rows = np.array([0, 1, 1, 2, 3, 4])
    cols = np.array([1, 0, 2, 1, 4, 3])
    vals = np.array([0.0, 0.0, 0.5, 0.5, 0.2, 0.2], np.float32)
    g = sp.csr_matrix((vals, (rows, cols)), shape=(5, 5))
    assert g.nnz == 6  # explicit zeros kept by the constructor
    dense = np.ones((5, 5), np.float32)
    dense[rows, cols] = vals
    np.fill_diagonal(dense, 0)
    for eps, ms in [(0.5, 2), (0.3, 2), (0.5, 3)]:
        want = DBSCAN(eps=eps, min_samples=ms, metric="precomputed").fit_predict(dense)
        got = DBSCAN(eps=eps, min_samples=ms, metric="precomputed").fit_predict(g)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(DBSCAN(eps=0.5, min_samples=2, metric="precomputed").fit_predict(g),
                                  [0, 0, 0, 1, 1])


def test_neighbourhood_graph_sorted_with_diagonal():
    g = neighbourhood_graph(np.array([0, 0, 1, 2]), np.array([0, 2, 2, 0]),
                            np.array([0.0, 0.4, 0.1, 0.4], np.float32), 3)
    assert g[1, 1] == 1 and g[2, 2] == 1 and g.nnz == 6  # missing self-distances stored as 1
    for r in range(3):
        row = g.data[g.indptr[r]:g.indptr[r + 1]]
        assert (np.diff(row) >= 0).all()


def blobs_with_tiny_groups(sizes, groups, dim=32, spread=0.15, offset=0.7, seed=0):
    """Blobs plus ``groups`` tight triplets, each placed next to one blob (label −1).

    Jaccard + DBSCAN flags a sample as outlier when its local query expansion mixes unrelated
    neighbourhoods: a triplet's V mixes its own support with the nearby blob's, which keeps it further than
    eps from the blob, and 3 < min_samples points cannot form a cluster on their own. (A single isolated
    point is absorbed by the blob its k2 neighbours belong to, as in the released code.)
    """
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((len(sizes), dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    g = c[:groups] + offset * rng.standard_normal((groups, dim)) / np.sqrt(dim)
    c = np.concatenate([c, g / np.linalg.norm(g, axis=1, keepdims=True)])
    sizes = list(sizes) + [3] * groups
    x = np.concatenate([ci + spread / np.sqrt(dim) * rng.standard_normal((s, dim)) for ci, s in zip(c, sizes)])
    y = np.concatenate([np.full(s, i if i < len(sizes) - groups else -1) for i, s in enumerate(sizes)])
    perm = rng.permutation(len(y))
    x = x[perm] / np.linalg.norm(x[perm], axis=1, keepdims=True)
    return x.astype(np.float32), y[perm]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blobs_recovered(seed):
    f, y = blobs_with_tiny_groups([25, 30, 40, 35, 28], groups=3, seed=seed)
    lab = pseudo_labels(f, eps=0.6, k1=20, k2=6)
    assert lab.dtype == np.int64 and lab.shape == y.shape
    assert (lab[y == -1] == -1).all()
    assert adjusted_rand_score(y[y >= 0], lab[y >= 0]) == 1.0
    assert set(lab[y >= 0]) == set(range(5))


@pytest.mark.parametrize("eps", [0.3, 0.5, 0.6, 0.8])
def test_sparse_equals_dense_labels(eps):
    f, _ = gaussian_blobs([20, 35, 15, 50, 30], spread=0.9, n_outliers=20, seed=2)
    np.testing.assert_array_equal(pseudo_labels(f, eps, 20, 6), dense_labels(f, eps, 20, 6))


def test_modality_balanced_equals_dense():
    f, _ = gaussian_blobs([30, 40, 25, 45], spread=0.8, n_outliers=10, seed=3)
    mod = np.random.default_rng(3).integers(0, 2, len(f))
    for k1, k2 in [(40, 32), (38, 18)]:
        np.testing.assert_array_equal(pseudo_labels(f, 0.6, k1, k2, modality=mod),
                                      dense_labels(f, 0.6, k1, k2, modality=mod))


def test_eps_at_least_one_and_torch_input():
    f, _ = gaussian_blobs([10, 10], seed=4)
    np.testing.assert_array_equal(pseudo_labels(f, 1.0, 8, 3), dense_labels(f, 1.0, 8, 3))
    np.testing.assert_array_equal(pseudo_labels(torch.from_numpy(f), 0.6, 8, 3), dense_labels(f, 0.6, 8, 3))
    with pytest.raises(ValueError):
        pseudo_labels(f, 0.0)
    with pytest.raises(ValueError):
        pseudo_labels(f, 0.5, min_samples=0)


def test_degenerate_inputs():
    assert pseudo_labels(np.ones((1, 8), np.float32), 0.6).tolist() == [-1]
    assert pseudo_labels(np.eye(3, dtype=np.float32), 0.6).tolist() == [-1, -1, -1]
    same = np.ones((30, 8), np.float32)
    lab = pseudo_labels(same, 0.6, 10, 6)
    np.testing.assert_array_equal(lab, dense_labels(same, 0.6, 10, 6))
    lab1 = pseudo_labels(same, 0.6, 10, 1)  # no expansion: some V rows are empty (self-distance 1)
    np.testing.assert_array_equal(lab1, dense_labels(same, 0.6, 10, 1))


def test_cluster_stats():
    st = cluster_stats(np.array([0, 0, 1, 1, 1, 1, -1, 2, 2, 2]))
    assert st["num_samples"] == 10 and st["num_clusters"] == 3 and st["num_outliers"] == 1
    assert st["sizes"] == dict(min=2, median=3.0, mean=3.0, max=4)
    empty = cluster_stats(np.array([-1, -1]))
    assert empty["num_clusters"] == 0 and empty["sizes"]["max"] == 0


@pytest.mark.slow  # bench_clustering.py runs each case in a worker process
def test_bench_script_on_tiny_inputs(tmp_path):
    from scripts import bench_clustering
    f, y = gaussian_blobs([20, 25, 30], n_outliers=3, seed=5)
    os.makedirs(tmp_path / "regdb")
    for m in ("rgb", "ir"):
        np.save(tmp_path / "regdb" / f"features_{m}.npy", f)
        np.save(tmp_path / "regdb" / f"train_{m}_resized_label.npy", y)
    (tmp_path / "manifest.json").write_text("{}")
    out = tmp_path / "res.json"
    res = bench_clustering.main(["--inputs", str(tmp_path), "--cases", "regdb_rgb", "regdb_joint",
                                 "--json", str(out)])
    assert [r["case"] for r in res] == ["regdb_rgb", "regdb_joint"]
    assert all(r["dense_equal"] for r in res)
    assert all(r["proc_peak_mb"] > 0 and r["proc_peak_mb"] >= r["peak_mb"] for r in res)
    assert res[0]["num_clusters"] == 3 and json.loads(out.read_text())[1]["n"] == 2 * len(y)
