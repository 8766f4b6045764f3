"""Tests of clustering.knn and clustering.jaccard against a literal loop implementation of method.md D.2/D.3."""
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from clustering import jaccard as J
from clustering.jaccard import compute_jaccard_distance
from clustering.knn import knn_search


def blobs(n, dim=24, centres=6, spread=0.7, seed=0, normalise=True):
    """Clustered random features (float32); rows L2-normalised unless ``normalise`` is False."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim))
    if normalise:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    else:  # flip-averaged-like descriptors: norms in (0.7, 1), not re-normalised
        x *= rng.uniform(0.7, 1.0, (n, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def brute_table(f, k):
    """Neighbour table by float64 squared L2, stable argsort, self pinned first."""
    f = f.astype(np.float64)
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, -1.0)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def reference_jaccard(f, k1, k2, modality=None):
    """method.md D.2 step 2 (and D.3 step 2 with ``modality``), written with per-sample loops and dicts."""
    n = len(f)
    k1 = min(k1, n)
    k2 = min(k2, k1)
    table = brute_table(f, k1)
    f64 = f.astype(np.float64)

    def recip(i, k):  # R(i, k): the table only has k1 columns
        return [j for j in table[i, :k + 1] if i in table[j, :k + 1]]

    half = int(np.around(k1 / 2))
    v = []
    for i in range(n):
        r_i = recip(i, k1)
        e = set(r_i)
        for c in r_i:
            r_c = recip(c, half)
            if len(set(r_c) & set(r_i)) > 2 / 3 * len(r_c):
                e |= set(r_c)
        w = {j: np.exp(-(2 - 2 * f64[i] @ f64[j])) for j in e}
        tot = sum(w.values())
        v.append({j: x / tot for j, x in w.items()})
    if k2 != 1:
        vq = []
        for i in range(n):
            nb = list(table[i, :k2])
            groups = [nb] if modality is None else [[j for j in nb if modality[j] == m] for m in (0, 1)]
            groups = [g for g in groups if g]
            row = {}
            for g in groups:
                for j in g:
                    for col, x in v[j].items():
                        row[col] = row.get(col, 0.0) + x / len(g) / len(groups)
            vq.append(row)
        v = vq
    d = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            s = sum(min(x, v[j][c]) for c, x in v[i].items() if c in v[j])
            d[i, j] = max(0.0, 1 - s / (2 - s))
    return d, table


# ----------------------------------------------------------------------------------------------- knn_search
@pytest.mark.parametrize("n,k,chunk", [(200, 30, 4096), (257, 17, 64), (130, 40, 37), (50, 1, 8)])
def test_knn_matches_bruteforce(n, k, chunk):
    f = blobs(n, seed=n)
    idx, dist = knn_search(f, k, chunk=chunk)
    ref = brute_table(f, k)
    assert idx.dtype == np.int64 and idx.shape == (n, k) and dist.shape == (n, k)
    np.testing.assert_array_equal(idx, ref)
    f64 = f.astype(np.float64)
    exact = ((f64[:, None] - f64[ref]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, exact, atol=2e-6)
    assert (idx[:, 0] == np.arange(n)).all() and (dist[:, 0] == 0).all()


def test_knn_sparse_and_dense_merge_paths(monkeypatch):
    """Cluster-sorted data: later rectangles merge only the entries below the rows' k-th distance (sparse
    path), early ones fall back to a dense top-k; both must give the exact table."""
    from clustering import knn_exact as K  # where the torch search looks its merge functions up
    calls = {"sparse": 0, "dense": 0}
    sparse, dense = K._merge_sparse, K._merge_dense

    def count_sparse(best, rows, new):
        calls["sparse"] += int(rows.numel() > 0)
        return sparse(best, rows, new)

    def count_dense(*args):
        calls["dense"] += 1
        return dense(*args)

    monkeypatch.setattr(K, "_merge_sparse", count_sparse)
    monkeypatch.setattr(K, "_merge_dense", count_dense)
    f = blobs(600, centres=12, spread=0.3, seed=600)
    f = f[np.argsort(np.argmax(f @ f[:12].T, axis=1), kind="stable")]
    for k, chunk in [(20, 128), (10, 64)]:
        np.testing.assert_array_equal(knn_search(f, k, chunk=chunk)[0], brute_table(f, k))
    assert calls["dense"] > 0 and calls["sparse"] > calls["dense"]


@pytest.mark.parametrize("density", [0.0, 0.002, 0.3, 1.0])
@pytest.mark.parametrize("cols", [64, 61])
def test_mask_nonzero(density, cols):
    from clustering.knn_exact import mask_nonzero
    mask = torch.rand(37, cols, generator=torch.Generator().manual_seed(cols)) < density
    want = torch.nonzero(mask, as_tuple=True)
    got = mask_nonzero(mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_knn_chunk_invariance_and_torch_input():
    f = blobs(300, seed=3, normalise=False)
    a = knn_search(f, 25, chunk=4096)
    b = knn_search(torch.from_numpy(f).double(), 25, chunk=50)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


@pytest.mark.parametrize("chunk", [16, 25, 7, 4096])
def test_knn_duplicates_self_first_and_ties_by_index(chunk):
    f = np.repeat(blobs(10, seed=4), 5, axis=0)  # 10 points, each 5 times
    idx, dist = knn_search(f, 7, chunk=chunk)
    assert (idx[:, 0] == np.arange(50)).all()
    # the 4 other copies come next, in increasing index order, at distance exactly 0, whatever the
    # block shapes (their Gram entries round differently from block to block)
    for i in range(50):
        copies = [j for j in range(5 * (i // 5), 5 * (i // 5) + 5) if j != i]
        assert list(idx[i, 1:5]) == copies
    assert (dist[:, :5] == 0).all()
    assert (np.diff(dist, axis=1) >= 0).all()


def test_knn_clamps_k_and_validates():
    idx, dist = knn_search(blobs(5), 30)
    assert idx.shape == (5, 5)
    assert sorted(idx[2]) == list(range(5))
    with pytest.raises(ValueError):
        knn_search(blobs(5), 0)
    with pytest.raises(ValueError):
        knn_search(np.zeros((0, 4), np.float32), 3)
    with pytest.raises(ValueError):
        knn_search(np.full((4, 3), np.nan, np.float32), 2)
    with pytest.raises(ValueError):
        knn_search(blobs(5), 2, knn="annoy")


def test_faiss_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match="faiss-cpu"):
        knn_search(blobs(20), 5, knn="faiss")


def test_faiss_matches_torch():
    pytest.importorskip("faiss")
    f = blobs(300, seed=5)
    a = knn_search(f, 30, knn="torch")
    b = knn_search(f, 30, knn="faiss")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    np.testing.assert_allclose(compute_jaccard_distance(f, knn="faiss"), compute_jaccard_distance(f), atol=1e-6)


# ------------------------------------------------------------------------------------------------- Jaccard
CASES = [  # n, k1, k2, modality?, normalise
    (60, 20, 6, False, True),
    (120, 30, 6, False, True),
    (100, 30, 6, False, False),
    (90, 11, 1, False, True),
    (80, 7, 3, True, True),
    (150, 40, 32, True, True),
    (110, 38, 18, True, False),
    (70, 5, 5, False, True),  # k1 odd: round(2.5) = 2 (half to even); k2 = k1
]


@pytest.mark.parametrize("n,k1,k2,use_mod,normalise", CASES)
def test_dense_matches_reference(n, k1, k2, use_mod, normalise):
    f = blobs(n, seed=n + k1, normalise=normalise)
    mod = np.random.default_rng(n).integers(0, 2, n) if use_mod else None
    ref, table = reference_jaccard(f, k1, k2, mod)
    np.testing.assert_array_equal(knn_search(f, min(k1, n))[0], table)  # same neighbour sets
    got = compute_jaccard_distance(f, k1=k1, k2=k2, modality=mod)
    assert got.dtype == np.float32 and got.shape == (n, n)
    assert (got < 1).mean() > 0.05 and got.std() > 0.05  # non-trivial structure
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("n,k1,k2,use_mod,normalise", CASES[:6])
def test_sparse_equals_dense(n, k1, k2, use_mod, normalise):
    f = blobs(n, seed=n, normalise=normalise)
    mod = np.random.default_rng(1).integers(0, 2, n) if use_mod else None
    dense = compute_jaccard_distance(f, k1, k2, modality=mod)
    s = compute_jaccard_distance(f, k1, k2, modality=mod, sparse=True)
    assert sp.isspmatrix_csr(s) and s.dtype == np.float32 and s.shape == (n, n)
    rows = np.repeat(np.arange(n), np.diff(s.indptr))
    stored = np.zeros((n, n), bool)
    stored[rows, s.indices] = True
    np.testing.assert_array_equal(stored, dense < 1)  # exactly the entries < 1, explicit zeros included
    np.testing.assert_array_equal(s.data, dense[rows, s.indices])
    assert stored.diagonal().all() and (s.diagonal() == 0).all()


def test_properties():
    f = blobs(140, seed=9)
    d = compute_jaccard_distance(f, 30, 6)
    np.testing.assert_array_equal(d, d.T)  # the min-sum is symmetric, and so is its evaluation here
    assert (d.diagonal() == 0).all()
    assert d.min() >= 0 and d.max() <= 1


def test_balanced_equals_plain_for_one_modality():
    f = blobs(100, seed=11)
    plain = compute_jaccard_distance(f, 20, 6)
    for m in (0, 1):
        np.testing.assert_allclose(compute_jaccard_distance(f, 20, 6, modality=np.full(100, m)), plain, atol=1e-7)


def test_torch_input_and_device_argument():
    f = blobs(90, seed=12)
    a = compute_jaccard_distance(f, 20, 6)
    b = compute_jaccard_distance(torch.from_numpy(f), 20, 6, modality=None, device="cpu")
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_min_sums_chunking(monkeypatch):
    """The chunked inverted-index min-sum equals a dense evaluation, whatever the chunk limits."""
    rng = np.random.default_rng(0)
    v = sp.random(70, 70, density=0.15, random_state=1, format="csr", dtype=np.float32)
    v.data = rng.random(v.nnz).astype(np.float32) + 0.01
    v.sort_indices()
    dense = v.toarray()
    want = np.minimum(dense[:, None, :], dense[None, :, :]).sum(-1)
    for terms, cells, workers in [(1 << 23, 1 << 24, 1), (50, 1, 1), (7, 300, 2), (400, 700, 3)]:
        monkeypatch.setattr(J, "_MAX_TERMS", terms)
        monkeypatch.setattr(J, "_MAX_CELLS", cells)
        got = np.zeros((70, 70))
        for r, c, s in J._min_sums(v, workers=workers):
            assert (c >= r).all()
            got[r, c] = s
        np.testing.assert_allclose(np.triu(want), got, atol=1e-6)


def test_chunk_limits_do_not_change_the_result(monkeypatch):
    f = blobs(130, seed=14)
    mod = np.random.default_rng(2).integers(0, 2, 130)
    want = compute_jaccard_distance(f, 30, 6, modality=mod)
    monkeypatch.setattr(J, "_MAX_CELLS", 1)  # one row per chunk in steps 2 and 5
    monkeypatch.setattr(J, "_MAX_TERMS", 10)
    np.testing.assert_array_equal(compute_jaccard_distance(f, 30, 6, modality=mod), want)


def test_small_n_clamps_k():
    f = blobs(12, seed=13)
    got = compute_jaccard_distance(f, k1=30, k2=6)
    ref, _ = reference_jaccard(f, 30, 6)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_degenerate_inputs():
    one = compute_jaccard_distance(blobs(1), 30, 6)
    assert one.shape == (1, 1) and one[0, 0] == 0
    assert compute_jaccard_distance(blobs(1), sparse=True).nnz == 1
    two = compute_jaccard_distance(blobs(2, seed=1), 30, 6, modality=[0, 1])
    assert two.shape == (2, 2) and (two.diagonal() == 0).all()
    same = np.ones((40, 8), np.float32)  # all identical: every point is its own first neighbour
    d = compute_jaccard_distance(same, 10, 6)
    assert np.isfinite(d).all() and d.min() >= 0 and d.max() <= 1 and (d.diagonal() == 0).all()
    d1 = compute_jaccard_distance(same, 10, 1)  # no query expansion
    assert np.isfinite(d1).all()


def test_invalid_arguments():
    f = blobs(20)
    with pytest.raises(ValueError):
        compute_jaccard_distance(f, modality=np.zeros(19))
    with pytest.raises(ValueError):
        compute_jaccard_distance(f, modality=np.full(20, 2))
    with pytest.raises(ValueError):
        compute_jaccard_distance(f, k1=0)
    with pytest.raises(ValueError):
        compute_jaccard_distance(f, knn="nope")
    with pytest.raises(ValueError):
        compute_jaccard_distance(np.zeros((0, 8), np.float32))
