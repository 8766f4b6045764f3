"""Tests for memory/prototypes.py and memory/gmm.py (stage-2 prototypes and clean probabilities)."""
import numpy as np
import pytest
import torch

from memory.gmm import (CleanProbabilityWarning, clean_probabilities, clean_probability,
                        minmax_normalize)
from memory.prototypes import PrototypeAccumulator, refresh_prototypes

# ----------------------------------------------------------------------------- prototypes


def loop_refresh(old, features, labels, weights):
    """Literal per-class Σ w f / count (unweighted count); unseen classes keep old rows."""
    new = old.clone()
    for c in range(old.shape[0]):
        idx = labels == c
        if bool(idx.any()):
            new[c] = (weights[idx].unsqueeze(1) * features[idx]).sum(0) / idx.sum()
    return new


def random_pass(n=40, c=6, d=5, seed=0, dtype=torch.float64):
    """Random features/labels/weights; class c-1 never appears."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(0, c - 1, (n,), generator=g)
    weights = torch.rand(n, generator=g, dtype=dtype)
    old = torch.randn(c, d, generator=g, dtype=dtype)
    return old, feats, labels, weights


@pytest.mark.parametrize("seed", range(3))
def test_refresh_matches_loop(seed):
    old, feats, labels, weights = random_pass(seed=seed)
    old_copy = old.clone()
    out = refresh_prototypes(old, feats, labels, weights)
    torch.testing.assert_close(out, loop_refresh(old, feats, labels, weights))
    assert torch.equal(old, old_copy)  # input untouched
    assert torch.equal(out[-1], old[-1])  # unseen class keeps its row
    assert out.dtype == old.dtype


def test_count_is_unweighted_and_duplicates_count():
    old = torch.zeros(2, 2)
    feats = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    weights = torch.tensor([1.0, 0.0, 0.5])
    out = refresh_prototypes(old, feats, labels, weights)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))


def test_accumulator_over_batches_equals_one_shot():
    old, feats, labels, weights = random_pass(n=64, seed=4)
    acc = PrototypeAccumulator(old.shape[0], old.shape[1], dtype=torch.float64)
    for sl in (slice(0, 10), slice(10, 37), slice(37, 64)):
        acc.add(feats[sl], labels[sl], weights[sl])
    torch.testing.assert_close(acc.result(old), refresh_prototypes(old, feats, labels, weights))
    acc = PrototypeAccumulator(old.shape[0], old.shape[1], dtype=torch.float64)
    torch.testing.assert_close(acc.result(old), old)  # nothing seen → old table
    assert torch.equal(acc.result(), torch.zeros_like(old))  # default old = zeros


def test_accumulator_half_precision_features_and_errors():
    acc = PrototypeAccumulator(3, 4)
    acc.add(torch.ones(2, 4, dtype=torch.float16), torch.tensor([0, 0]), torch.tensor([1.0, 0.5]))
    out = acc.result(torch.zeros(3, 4, dtype=torch.float16))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out[0], torch.full((4,), 0.75, dtype=torch.float16))
    with pytest.raises(ValueError, match="labels must lie"):
        acc.add(torch.ones(1, 4), torch.tensor([3]), torch.ones(1))
    with pytest.raises(ValueError, match="shape"):
        acc.add(torch.ones(2, 4), torch.tensor([0]), torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        acc.result(torch.zeros(2, 4))

# ----------------------------------------------------------------------------- GMM


def bimodal(seed=0, n_clean=300, n_noisy=80):
    """Low-loss (clean) mode followed by a high-loss (noisy) mode."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.5, 0.1, n_clean), rng.normal(4.0, 0.4, n_noisy)])


def test_minmax_normalize():
    out = minmax_normalize([2.0, 4.0, 3.0])
    np.testing.assert_allclose(out, [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(minmax_normalize(np.full(5, 7.0)), np.zeros(5))
    assert minmax_normalize(np.array([])).size == 0
    np.testing.assert_allclose(minmax_normalize(torch.tensor([1.0, 3.0])), [0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        minmax_normalize([1.0, float("nan")])


def test_bimodal_losses_split_into_clean_and_noisy():
    losses = bimodal()
    p = clean_probability(minmax_normalize(losses))
    assert p.shape == losses.shape and p.dtype == np.float32
    assert p[:300].min() > 0.9
    assert p[300:].max() < 0.1


@pytest.mark.parametrize("losses, reason", [(np.full(10, 0.3), "constant"),
                                            (np.array([0.5]), "sample"),
                                            (np.array([0.2, 0.2 + 1e-9, 0.2]), "constant")])
def test_degenerate_inputs_give_ones_with_warning(losses, reason):
    with pytest.warns(CleanProbabilityWarning, match=reason):
        p = clean_probability(losses)
    np.testing.assert_array_equal(p, np.ones(losses.size, dtype=np.float32))


def test_failed_fit_gives_ones(monkeypatch):
    def boom(self, x):
        raise ValueError("ill-defined covariance")
    monkeypatch.setattr("memory.gmm.GaussianMixture.fit", boom)
    with pytest.warns(CleanProbabilityWarning, match="failed"):
        p = clean_probability(np.linspace(0, 1, 10))
    np.testing.assert_array_equal(p, np.ones(10, dtype=np.float32))


def test_clean_probabilities_released_scheme():
    rng = np.random.default_rng(1)
    v1, v2, ir = bimodal(1) * 2.0, bimodal(2), rng.permutation(bimodal(3, 100, 40))
    p1, p2, pr = clean_probabilities(v1, v2, ir, seed=0)
    assert p1.shape == v1.shape and p2.shape == v2.shape and pr.shape == ir.shape
    joint = clean_probability(np.concatenate([minmax_normalize(v1), minmax_normalize(v2)]), seed=0)
    np.testing.assert_array_equal(np.concatenate([p1, p2]), joint)
    np.testing.assert_array_equal(pr, clean_probability(minmax_normalize(ir), seed=0))
    assert np.all(np.isfinite(p1)) and np.all((pr >= 0) & (pr <= 1))
    # IR: low losses get high probability regardless of position.
    assert pr[ir < 1.0].min() > 0.9 and pr[ir > 3.0].max() < 0.1


def test_determinism_with_seed():
    losses = minmax_normalize(np.random.default_rng(5).random(200) ** 2)
    np.testing.assert_array_equal(clean_probability(losses, seed=3), clean_probability(losses, seed=3))


def test_rgb_views_must_have_equal_length():
    with pytest.raises(ValueError, match="same length"):
        clean_probabilities(np.ones(3), np.ones(4), np.ones(3))
