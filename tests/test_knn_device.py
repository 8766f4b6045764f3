"""Clustering on the training device: the device-agnostic k-NN / Jaccard / DBSCAN path, run with an explicit
``device`` on CPU tensors, gives the neighbours and labels of the default (numpy input) call; stage 1 hands
the clustering the features on the device they were extracted on; TF32 is off during the search.
The same comparisons run on CUDA in the GPU-marked tests (scripts/gpu_check.sh)."""
import argparse

import numpy as np
import pytest
import torch

from clustering.dbscan import pseudo_labels
from clustering.jaccard import compute_jaccard_distance
from clustering.knn import exact_float32, knn_search

CPU = torch.device("cpu")


def blobs(n, dim=32, centres=8, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def with_duplicates(n, seed=1):
    """Blobs where a third of the rows are exact copies of other rows (ties that must break by index)."""
    x = blobs(n, seed=seed)
    rng = np.random.default_rng(seed)
    dst = rng.choice(n, n // 3, replace=False)
    x[dst] = x[rng.integers(0, n, dst.size)]
    return x


CASES = {"random": lambda: blobs(300), "duplicates": lambda: with_duplicates(300)}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk", [37, 64, 4096])
def test_knn_with_device_equals_default(case, chunk):
    x = CASES[case]()
    # Other block sizes round the Gram entries differently: the near-tie re-ranking (with TIE_MARGIN extra
    # candidates) still gives the same table, duplicates included.
    ref_idx, ref_d = knn_search(x, 20)
    idx, d = knn_search(torch.from_numpy(x), 20, device=CPU, chunk=chunk)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_labels_with_device_equal_default(case):
    x = CASES[case]()
    ref = pseudo_labels(x, eps=0.5, k1=15, k2=4)
    assert (ref >= 0).any() and ref.max() >= 2  # a real clustering, not all noise
    np.testing.assert_array_equal(pseudo_labels(torch.from_numpy(x), eps=0.5, k1=15, k2=4, device=CPU), ref)
    mod = np.r_[np.zeros(150, np.int64), np.ones(150, np.int64)]
    np.testing.assert_array_equal(pseudo_labels(torch.from_numpy(x), 0.5, 20, 8, modality=mod, device=CPU),
                                  pseudo_labels(x, 0.5, 20, 8, modality=mod))
    np.testing.assert_array_equal(compute_jaccard_distance(torch.from_numpy(x), 15, 4, device=CPU),
                                  compute_jaccard_distance(x, 15, 4))


def test_cluster_epoch_clusters_where_the_features_are(monkeypatch):
    """utils.train.stage1_steps.cluster_epoch passes the features' device to the clustering, and its labels are
    those of the plain numpy call."""
    from utils.train import stage1_steps as baseline_steps

    feats = {"rgb": torch.from_numpy(blobs(160, seed=3)), "ir": torch.from_numpy(blobs(120, seed=4))}
    args = argparse.Namespace(eps=0.5, k1=15, k2=4, k1_joint=20, k2_joint=8, knn="torch")
    devices = []
    real = baseline_steps.pseudo_labels

    def spy(features, *a, device=None, **kw):
        devices.append(device)
        return real(features, *a, device=device, **kw)

    monkeypatch.setattr(baseline_steps, "pseudo_labels", spy)
    labels = baseline_steps.cluster_epoch(feats, args, joint=True)
    assert devices == [CPU, CPU, CPU]
    np.testing.assert_array_equal(labels["rgb"], pseudo_labels(feats["rgb"].numpy(), 0.5, 15, 4))
    both = np.concatenate([feats["rgb"].numpy(), feats["ir"].numpy()])
    mod = np.r_[np.zeros(160, np.int64), np.ones(120, np.int64)]
    np.testing.assert_array_equal(labels["joint"], pseudo_labels(both, 0.5, 20, 8, modality=mod))


def test_build_memory_with_labels_from_numpy():
    """Memories are built from features on the training device and numpy labels (moved there)."""
    from utils.train.stage1_steps import build_memory

    x = torch.from_numpy(blobs(60, seed=5))
    lab = np.r_[np.repeat(np.arange(5), 10), -np.ones(10, np.int64)]
    args = argparse.Namespace(temp=0.05, momentum=0.1, use_hard=False)
    mem = build_memory(x, lab, args, CPU, modality=torch.zeros(60, dtype=torch.long))
    assert mem.features.shape == (5, 32)


def test_exact_float32_switches_tf32_off_for_cuda_only():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with exact_float32(torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
        with exact_float32(CPU):
            assert torch.backends.cuda.matmul.allow_tf32 is True
        with pytest.raises(RuntimeError):
            with exact_float32(torch.device("cuda")):
                raise RuntimeError("boom")
        assert torch.backends.cuda.matmul.allow_tf32 is True  # restored after an error too
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_faiss_index_choice_without_gpu_faiss():
    from clustering.knn_faiss import faiss_index

    class FakeFaiss:  # faiss-cpu: no StandardGpuResources
        IndexFlatL2 = staticmethod(lambda dim: ("cpu-index", dim))

    index, res = faiss_index(FakeFaiss, 8, torch.device("cuda"))
    assert index == ("cpu-index", 8) and res is None


# ------------------------------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_clustering_equals_cpu(case):
    x = CASES[case]()
    dev = torch.device("cuda")
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # as training sets it: the search must not use TF32
    try:
        idx, _ = knn_search(torch.from_numpy(x).to(dev), 20)
        np.testing.assert_array_equal(idx, knn_search(x, 20)[0])
        labels = pseudo_labels(torch.from_numpy(x).to(dev), eps=0.5, k1=15, k2=4)
        np.testing.assert_array_equal(labels, pseudo_labels(x, eps=0.5, k1=15, k2=4))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stage1_clustering_and_memories_stay_on_the_gpu():
    from utils.train import stage1_steps as baseline_steps

    dev = torch.device("cuda")
    cpu_feats = {"rgb": torch.from_numpy(blobs(160, seed=3)), "ir": torch.from_numpy(blobs(120, seed=4))}
    args = argparse.Namespace(eps=0.5, k1=15, k2=4, k1_joint=20, k2_joint=8, knn="torch", temp=0.05,
                              momentum=0.1, use_hard=False)
    ref = baseline_steps.cluster_epoch(cpu_feats, args, joint=True)
    labels = baseline_steps.cluster_epoch({k: v.to(dev) for k, v in cpu_feats.items()}, args, joint=True)
    for key in ref:
        np.testing.assert_array_equal(labels[key], ref[key])
    mem = baseline_steps.build_memory(cpu_feats["rgb"].to(dev), labels["rgb"], args, dev)
    assert mem.features.is_cuda
