"""Tests for memory/centroids.py and memory/cluster_memory.py (known answers vs literal loops)."""
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from memory.centroids import cluster_centroids, cross_modal_mask, mixed_centroids
from memory.cluster_memory import ClusterMemory, hard_update_, occurrence_rank, sequential_update_
from utils.distributed import DistInfo, batch_gather

# ----------------------------------------------------------------------------- references (loops)


def loop_centroids(features, labels, k):
    """Literal per-cluster mean, normalised."""
    rows = [features[labels == c].mean(0) for c in range(k)]
    return F.normalize(torch.stack(rows), dim=1)


def loop_mixed(features, labels, modality, k):
    """Literal per-cluster (rgb mean + ir mean)/2 or single-modality mean, normalised."""
    rows = []
    for c in range(k):
        means = [features[(labels == c) & (modality == m)].mean(0) for m in (0, 1)
                 if bool(((labels == c) & (modality == m)).any())]
        rows.append(torch.stack(means).mean(0))
    return F.normalize(torch.stack(rows), dim=1)


def loop_sequential(memory, inputs, targets, mu):
    """Released per-sample update in batch order."""
    memory = memory.clone()
    for x, y in zip(inputs, targets):
        memory[y] = mu * memory[y] + (1 - mu) * x
        memory[y] = memory[y] / memory[y].norm()
    return memory


def loop_hard(memory, inputs, targets, mu):
    """Per class: sample with the lowest similarity to the current row, one update."""
    memory = memory.clone()
    old = memory.clone()
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).flatten()
        sims = inputs[idx] @ old[c]
        h = idx[int(torch.argmin(sims))]
        memory[c] = F.normalize(mu * old[c] + (1 - mu) * inputs[h], dim=0)
    return memory


def direct_loss(inputs, targets, memory, temp):
    """CE(normalize(x) Mᵀ / τ, y) with a constant memory."""
    return F.cross_entropy(F.normalize(inputs, dim=1) @ memory.t() / temp, targets)


def make_memory(k=7, d=16, seed=0, dtype=torch.float32, **kw):
    """A ClusterMemory with random unit centres."""
    g = torch.Generator().manual_seed(seed)
    mem = ClusterMemory(d, k, **kw).to(dtype)
    mem.set_centroids(torch.randn(k, d, generator=g, dtype=dtype))
    return mem

# ----------------------------------------------------------------------------- centroids


def test_cluster_centroids_matches_loop_and_ignores_outliers():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(50, 8, generator=g)
    labels = torch.arange(50) % 5
    labels[::7] = -1
    out = cluster_centroids(feats, labels)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out, loop_centroids(feats, labels, 5))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_cluster_centroids_errors():
    feats = torch.randn(6, 4)
    with pytest.raises(ValueError, match="no members"):
        cluster_centroids(feats, torch.tensor([0, 0, 2, 2, -1, 2]))
    with pytest.raises(ValueError, match="no members"):
        cluster_centroids(feats, torch.tensor([0, 0, 1, 1, 1, 1]), num_clusters=3)
    with pytest.raises(ValueError, match="out of range"):
        cluster_centroids(feats, torch.tensor([0, 0, 1, 1, 1, 3]), num_clusters=3)
    with pytest.raises(ValueError, match="no clusters"):
        cluster_centroids(feats, torch.full((6,), -1))
    with pytest.raises(ValueError, match="shape"):
        cluster_centroids(feats, torch.zeros(5, dtype=torch.long))


def test_mixed_centroids_matches_loop():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(60, 8, generator=g)
    labels = torch.arange(60) % 6
    modality = (torch.arange(60) // 6) % 2
    modality[labels == 4] = 0  # cluster 4: RGB only
    modality[labels == 5] = 1  # cluster 5: IR only
    modality[(labels == 0) & (torch.arange(60) > 20)] = 0  # cluster 0: unbalanced counts
    labels[3] = -1
    out = mixed_centroids(feats, labels, modality)
    torch.testing.assert_close(out, loop_mixed(feats, labels, modality, 6))
    # Balancing: cluster 0 is NOT the plain mean of its members.
    plain = F.normalize(feats[labels == 0].mean(0), dim=0)
    assert not torch.allclose(out[0], plain)
    mask = cross_modal_mask(labels, modality)
    assert mask.tolist() == [True, True, True, True, False, False]


def test_mixed_centroids_bad_modality():
    with pytest.raises(ValueError, match="modality"):
        mixed_centroids(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 0]))

# ----------------------------------------------------------------------------- cluster memory


def test_occurrence_rank_known_answer():
    assert occurrence_rank(torch.tensor([3, 1, 3, 3, 1])).tolist() == [0, 0, 1, 2, 1]
    assert occurrence_rank(torch.tensor([], dtype=torch.long)).tolist() == []


def test_loss_value_and_gradient_match_direct_formula():
    mem = make_memory(dtype=torch.float64, temp=0.05)
    m0 = mem.features.clone()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (12,), generator=g)
    loss = mem(x, y)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = direct_loss(ref_x, y, m0, 0.05)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, ref_x.grad)


@pytest.mark.parametrize("seed", range(5))
def test_sequential_update_matches_per_sample_loop(seed):
    g = torch.Generator().manual_seed(seed)
    mem = make_memory(k=9, d=32, seed=seed)
    m0 = mem.features.clone()
    y = torch.randint(0, 9, (64,), generator=g)  # many repeats, arbitrary order
    x = torch.randn(64, 32, generator=g, requires_grad=True)
    mem(x, y).backward()
    expected = loop_sequential(m0, F.normalize(x.detach(), dim=1), y, 0.1)
    assert torch.max(torch.abs(mem.features - expected)) < 1e-6
    torch.testing.assert_close(mem.features.norm(dim=1), torch.ones(9))


def test_update_only_in_backward():
    mem = make_memory()
    m0 = mem.features.clone()
    x = torch.randn(5, 16, requires_grad=True)
    loss = mem(x, torch.tensor([0, 1, 1, 2, 0]))
    assert torch.equal(mem.features, m0)
    loss.backward()
    assert not torch.equal(mem.features, m0)
    assert torch.equal(mem.features[3:], m0[3:])  # untouched classes keep their rows


def test_hard_update_picks_least_similar_sample():
    mem = ClusterMemory(3, 2, momentum=0.1, use_hard=True)
    mem.set_centroids(torch.eye(3)[:2])
    x = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.2, 1.0, 0.0],   # class 0, second is hardest
                                  [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]), dim=1)  # class 1, 2nd hardest
    y = torch.tensor([0, 0, 1, 1])
    mem(x.clone().requires_grad_(True), y).backward()
    torch.testing.assert_close(mem.features[0], F.normalize(0.1 * torch.eye(3)[0] + 0.9 * x[1], dim=0))
    torch.testing.assert_close(mem.features[1], F.normalize(0.1 * torch.eye(3)[1] + 0.9 * x[3], dim=0))


@pytest.mark.parametrize("seed", range(3))
def test_hard_update_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    memory = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    x = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    y = torch.randint(0, 5, (30,), generator=g)
    expected = loop_hard(memory, x, y, 0.1)
    hard_update_(memory, x, y, 0.1)
    torch.testing.assert_close(memory, expected)


def test_sequential_update_function_direct():
    g = torch.Generator().manual_seed(7)
    memory = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1)
    x = F.normalize(torch.randn(20, 5, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 4, (20,), generator=g, dtype=torch.int32)
    expected = loop_sequential(memory, x, y.long(), 0.3)
    sequential_update_(memory, x, y, 0.3)
    torch.testing.assert_close(memory, expected, atol=1e-12, rtol=0)


def test_through_linear_layer():
    torch.manual_seed(0)
    lin = nn.Linear(10, 16)
    mem = make_memory()
    m0 = mem.features.clone()
    inp = torch.randn(8, 10)
    y = torch.randint(0, 7, (8,))
    mem(lin(inp), y).backward()
    got = lin.weight.grad.clone()
    lin.zero_grad()
    direct_loss(lin(inp), y, m0, mem.temp).backward()
    torch.testing.assert_close(got, lin.weight.grad)


def test_set_centroids_copies_normalises_and_resizes():
    mem = ClusterMemory(4, 3)
    src = torch.randn(3, 4) * 5
    mem.set_centroids(src)
    src.zero_()
    torch.testing.assert_close(mem.features.norm(dim=1), torch.ones(3))
    mem.set_centroids(torch.randn(5, 4))
    assert mem.features.shape == (5, 4) and mem.num_clusters == 5
    assert "features" in dict(mem.named_buffers())
    with pytest.raises(ValueError):
        mem.set_centroids(torch.randn(5, 3))


def test_dtype_and_device_follow_buffers():
    mem = make_memory().double()
    assert mem.features.dtype == torch.float64
    loss = mem(torch.randn(4, 16, dtype=torch.float64, requires_grad=True), torch.tensor([0, 1, 2, 3]))
    assert loss.dtype == torch.float64 and loss.device == mem.features.device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device():
    mem = make_memory().to("cuda")
    x = torch.randn(6, 16, device="cuda", requires_grad=True)
    mem(x, torch.tensor([0, 1, 1, 2, 0, 3])).backward()  # CPU targets are moved
    assert mem.features.is_cuda and x.grad.is_cuda

# ----------------------------------------------------------------------------- distributed


def _dist_worker(rank, world, init_file, memory, xs, ys, out_dir):
    """One gloo rank: local batch xs[rank]; saves its memory after one backward."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}",
                                         rank=rank, world_size=world)
    try:
        gather = batch_gather(DistInfo(enabled=True, rank=rank, world_size=world))
        mem = ClusterMemory(memory.shape[1], memory.shape[0], gather=gather)
        mem.set_centroids(memory)
        mem(xs[rank].clone().requires_grad_(True), ys[rank]).backward()
        torch.save(mem.features, os.path.join(out_dir, f"rank{rank}.pt"))
        # Told it trains alone, a memory updates with the local batch only, process group or not.
        alone = ClusterMemory(memory.shape[1], memory.shape[0])
        alone.set_centroids(memory)
        alone(xs[rank].clone().requires_grad_(True), ys[rank]).backward()
        torch.save(alone.features, os.path.join(out_dir, f"alone{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # mp.spawn
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_distributed_ranks_apply_same_update(tmp_path):
    g = torch.Generator().manual_seed(11)
    memory = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    xs = torch.randn(2, 10, 8, generator=g)
    ys = torch.randint(0, 5, (2, 10), generator=g)
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), memory, xs, ys, str(tmp_path)),
             nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0, r1)
    expected = loop_sequential(memory, F.normalize(xs.reshape(20, 8), dim=1), ys.reshape(20), 0.1)
    assert torch.max(torch.abs(r0 - expected)) < 1e-6
    for r in range(2):
        alone = torch.load(tmp_path / f"alone{r}.pt")
        assert torch.max(torch.abs(alone - loop_sequential(memory, F.normalize(xs[r], dim=1), ys[r], 0.1))) < 1e-6


def test_gather_must_be_callable():
    with pytest.raises(TypeError, match="gather"):
        ClusterMemory(4, 3, gather=2)


def test_batch_gather_is_none_for_one_process():
    assert batch_gather(DistInfo()) is None
    assert batch_gather(DistInfo(enabled=True, rank=0, world_size=1)) is None  # torchrun with one process
