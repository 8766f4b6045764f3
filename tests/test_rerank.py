"""k-reciprocal re-ranking (clustering/rerank.py) against a direct dense implementation of Zhong et al.'s
``re_ranking`` written here with plain loops, and its place in the evaluation (utils/evaluation/protocols.py)."""
import numpy as np
import pytest
import torch

from clustering.rerank import RerankParams, rerank_distance


def dense_rerank(q, g, k1, k2, lam):
    """Zhong et al. (CVPR 2017) step by step, on dense float64 matrices (loops on purpose).

    q, g: (Q, D), (G, D) unit features. Returns the (Q, G) final distance.
    """
    x = np.concatenate([q, g]).astype(np.float64)
    n, nq = x.shape[0], q.shape[0]
    d = 2.0 - 2.0 * x @ x.T                               # squared Euclidean distance of unit vectors
    d = d / d.max(axis=1, keepdims=True)                  # each row scaled to a maximum of 1
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = rank[i, :k + 1]
        return [int(j) for j in forward if i in rank[j, :k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, int(np.around(k1 / 2.0)))
            if len(set(rc) & set(r)) > 2.0 / 3.0 * len(rc):
                expanded |= set(rc)
        cols = sorted(expanded)
        w = np.exp(-d[i, cols])
        v[i, cols] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((nq, n))
    for i in range(nq):
        s = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1.0 - s / (2.0 - s)
    final = (1.0 - lam) * jaccard + lam * d[:nq]
    return final[:, nq:]


def clustered_features(seed, nq, ng, ids, dim=16, spread=0.35):
    """Unit features of ``ids`` identities (a random centre each plus noise), split into query/gallery."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    labels = rng.integers(0, ids, size=nq + ng)
    x = centres[labels] + spread * rng.normal(size=(nq + ng, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:nq].astype(np.float32), x[nq:].astype(np.float32), labels[:nq], labels[nq:]


@pytest.mark.parametrize("seed, nq, ng, k1, k2, lam", [
    (0, 7, 12, 5, 3, 0.3),
    (1, 15, 20, 6, 1, 0.3),      # k2 = 1: no query expansion
    (2, 10, 30, 20, 6, 0.3),     # the defaults, k1 + 1 > pool size / 2
    (3, 4, 9, 20, 6, 0.5),       # k1 + 1 > pool size: every sample is a neighbour
    (4, 25, 25, 7, 4, 0.0),      # Jaccard alone
])
def test_rerank_equals_dense_reference(seed, nq, ng, k1, k2, lam):
    q, g, _, _ = clustered_features(seed, nq, ng, ids=5)
    got = rerank_distance(torch.from_numpy(q), torch.from_numpy(g), RerankParams(k1, k2, lam))
    want = dense_rerank(q, g, k1, k2, lam)
    assert got.shape == (nq, ng) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_rerank_keeps_pairs_without_shared_support_at_one():
    """Two far-apart groups with small k1 share no neighbours: J = 1 and the final distance is
    (1 - lambda) + lambda * d' there (the sparse code leaves those pairs out)."""
    q, g, ql, gl = clustered_features(7, 12, 12, ids=2, spread=0.05)
    want = dense_rerank(q, g, 3, 2, 0.3)
    got = rerank_distance(q, g, RerankParams(3, 2, 0.3))
    far = ql[:, None] != gl[None, :]
    assert far.any() and (want[far] >= 0.7 - 1e-9).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_rerank_normalises_features_and_checks_params():
    q, g, _, _ = clustered_features(5, 6, 8, ids=3)
    base = rerank_distance(q, g, RerankParams(4, 2, 0.3))
    np.testing.assert_allclose(rerank_distance(3.0 * q, 0.5 * g, RerankParams(4, 2, 0.3)), base, atol=1e-6)
    for bad in ((0, 6, 0.3), (20, 0, 0.3), (20, 6, 1.5)):
        with pytest.raises(ValueError, match="re-ranking"):
            RerankParams(*bad)


def test_rerank_improves_a_noisy_ranking():
    """On clustered features the re-ranked mAP is not worse than the plain one (a sanity check that the
    distance is oriented as 'smaller = closer' and fed to the metric the right way round)."""
    from utils.evaluation.metrics import eval_regdb

    q, g, ql, gl = clustered_features(11, 40, 60, ids=8, spread=0.8)
    plain = eval_regdb(-(q @ g.T), ql, gl)[1]
    reranked = eval_regdb(rerank_distance(q, g, RerankParams(10, 4, 0.3)), ql, gl)[1]
    assert reranked >= plain - 1e-9
