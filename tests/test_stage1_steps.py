"""Stage-1 building blocks (utils/train/stage1_steps.py) on small known inputs: the clustering of an
epoch, its report, the memories, the loaders' size rule and one training iteration."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.sample import Sample
import typed_settings
from utils.settings import MemorySettings
from utils.train import stage1_steps as steps

CPU = torch.device("cpu")
MEMORY = MemorySettings(temp=0.05, momentum=0.1, use_hard=False)


def _blobs(centres: int, per: int, dim: int = 8, seed: int = 0, spread: float = 0.01) -> torch.Tensor:
    """``centres`` tight groups of ``per`` points around random unit centres, group after group."""
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(centres, dim, generator=g), dim=1)
    return (c.repeat_interleave(per, 0) + spread * torch.randn(centres * per, dim, generator=g)).float()


def _settings(*flags: str):
    return typed_settings.stage1("--eps", "0.6", "--k1", "5", "--k2", "2", "--k1-joint", "6", "--k2-joint", "2",
                                 "--num-instances", "4", "-b", "16", "--iters", "3", "--seed", "0", "--img-h", "16",
                                 "--img-w", "8", "--workers", "0", *flags)


def _ctx():
    return typed_settings.context(_settings())


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings group the samples alike (label values may differ)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _pure(labels: np.ndarray, groups: np.ndarray) -> bool:
    """Whether no cluster (outliers aside) mixes two groups."""
    return all(len(set(groups[labels == c].tolist())) == 1 for c in set(labels.tolist()) - {-1})


def test_cluster_epoch_finds_the_groups_per_modality_and_jointly():
    feats = {"rgb": _blobs(4, 10, seed=1), "ir": _blobs(3, 10, seed=2)}
    labels = steps.cluster_epoch(feats, _settings("--k1", "8", "--k1-joint", "8").cluster, joint=True)
    assert _same_partition(labels["rgb"], np.repeat(np.arange(4), 10))
    assert _pure(labels["ir"], np.repeat(np.arange(3), 10)) and labels["ir"].max() == 2
    # jointly: the 7 groups (rgb and ir centres differ) stay apart
    assert labels["joint"].shape == (70,) and labels["joint"].dtype == np.int64
    assert _pure(labels["joint"], np.r_[np.repeat(np.arange(4), 10), 4 + np.repeat(np.arange(3), 10)])
    assert labels["joint"].max() == 6
    assert "joint" not in steps.cluster_epoch(feats, _settings("--k1", "8").cluster, joint=False)


def test_clustering_report_counts_and_associate_rate():
    labels = {"rgb": np.array([0, 0, 1, 1, -1]), "ir": np.array([0, 0, -1]),
              # joint: clusters 0 and 1 hold rgb rows only / both modalities; cluster 2 infrared only
              "joint": np.array([0, 0, 1, 1, -1, 1, 2, 2])}
    rep = steps.clustering_report(labels, n_rgb=5)
    assert (rep["rgb_clusters"], rep["rgb_outliers"], rep["ir_clusters"], rep["ir_outliers"]) == (2, 1, 1, 1)
    assert (rep["joint_clusters"], rep["joint_outliers"]) == (3, 1)
    assert rep["joint_cross_modal_clusters"] == 1 and rep["associate_rate"] == pytest.approx(1 / 3)
    assert "associate_rate" not in steps.clustering_report({k: labels[k] for k in ("rgb", "ir")}, 5)


def test_build_memory_holds_the_unit_centroids_or_none():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    mem = steps.build_memory(x, np.array([0, 0, 1, -1]), MEMORY, CPU)
    assert torch.allclose(mem.features, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert mem.gather is None  # one process: the update uses the local batch
    assert steps.build_memory(x, np.array([0, 0, 0, -1]), MEMORY, CPU) is None
    assert steps.build_memory(x, -np.ones(4, np.int64), MEMORY, CPU) is None


def test_memories_step_joint_memory_balances_the_modalities():
    feats = {"rgb": torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
             "ir": torch.tensor([[0.0, 1.0], [0.0, 1.0]])}
    labels = {"rgb": np.array([0, 0, 1, 1]), "ir": np.array([0, 1]), "joint": np.array([0, 0, 0, 1, 0, 1])}
    mem = steps.memories_step(feats, labels, MEMORY, _ctx(), joint=True)
    assert mem["ir"] is not None and mem["rgb"] is not None
    # joint cluster 0: mean of its rgb mean (1, 0) and its ir mean (0, 1), normalised
    assert torch.allclose(mem["joint"].features[0], torch.tensor([0.5 ** 0.5, 0.5 ** 0.5]))
    assert torch.allclose(mem["joint"].features[1], torch.tensor([0.0, 1.0]))
    assert "joint" not in steps.memories_step(feats, labels, MEMORY, _ctx(), joint=False)


def test_pass_length():
    assert steps.pass_length(np.array([0, 0, 0, 1, 1, 2, -1, -1]), num_instances=4) == 9  # 4 + 4 + 1
    assert steps.pass_length(np.array([-1, -1]), num_instances=4) == 0
    assert steps.pass_length(np.array([5, 5]), num_instances=2) == 2  # ids need not be contiguous


def _samples(n):
    return [Sample(path=f"/nowhere/{i}.jpg", pid=i // 4, cam=1 + i % 2, modality="rgb") for i in range(n)]


def test_train_loader_is_none_when_the_clusters_cannot_fill_a_batch():
    labels = np.repeat(np.arange(3), 4)  # 3 ids x 4 = 12 images per pass < batch of 16
    assert steps.train_loader(_samples(12), labels, None, _settings(), _ctx(), epoch=0, stream=0) is None
    labels = np.repeat(np.arange(4), 4)
    loader = steps.train_loader(_samples(16), labels, None, _settings(), _ctx(), epoch=0, stream=0)
    assert loader is not None and len(loader.batch_sampler) == 3  # --iters batches


def test_loaders_step_joint_loaders_use_cross_modal_clusters_only():
    data = {"rgb": _samples(16), "ir": _samples(16), "transforms": (None, None)}
    rgb = np.repeat(np.arange(4), 4)
    # joint: clusters 0..3 hold both modalities; cluster 4 holds infrared only; rgb rows are one cluster each
    joint_ok = np.r_[rgb, rgb]
    joint_bad = np.r_[rgb, np.full(16, 4)]
    ok = steps.loaders_step(data, {"rgb": rgb, "ir": rgb, "joint": joint_ok}, _settings(), _ctx(), 0, joint=True)
    assert all(ok[k] is not None for k in ("rgb", "ir", "joint_rgb", "joint_ir"))
    bad = steps.loaders_step(data, {"rgb": rgb, "ir": rgb, "joint": joint_bad}, _settings(), _ctx(), 0, joint=True)
    assert bad["rgb"] is not None and bad["joint_rgb"] is None and bad["joint_ir"] is None


class _Flat(nn.Module):
    """Stand-in network: ``feat`` = a linear map of the flattened rgb and ir images, [rgb; ir] rows."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x_rgb, x_ir):
        return SimpleNamespace(feat=self.fc(torch.cat([x_rgb, x_ir]).flatten(1)))


def test_memory_step_losses_are_the_memory_nce_of_both_views_and_ir():
    torch.manual_seed(0)
    model = _Flat()
    va, vb, t = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    y_rgb, y_ir = torch.tensor([0, 1]), torch.tensor([1, 0])
    mems = [steps.build_memory(torch.randn(4, 3), np.array([0, 0, 1, 1]), MEMORY, CPU) for _ in range(2)]
    before = [m.features.clone() for m in mems]
    losses = steps.memory_step(model, ((va, vb), y_rgb, None, None), (t, y_ir, None, None), mems[0], mems[1], CPU)
    with torch.no_grad():
        f = F.normalize(model.fc(torch.cat([va, vb, t]).flatten(1)), dim=1)
        want_rgb = F.cross_entropy(f[:4] @ before[0].t() / 0.05, torch.cat([y_rgb, y_rgb]))
        want_ir = F.cross_entropy(f[4:] @ before[1].t() / 0.05, y_ir)
    assert torch.allclose(losses["loss_rgb"], want_rgb) and torch.allclose(losses["loss_ir"], want_ir)
    sum(losses.values()).backward()
    assert model.fc.weight.grad is not None
    assert not torch.equal(mems[0].features, before[0])  # the memories update in backward


def test_joint_step_updates_shared_memory_ir_first():
    """One shared memory for both calls (joint phase): the rows must end as if the infrared features
    were fed before the visible ones (released order), which differs from the other order."""
    import torch
    from memory.cluster_memory import ClusterMemory
    from utils.train.stage1_steps import memory_step

    torch.manual_seed(0)
    feat = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)  # 2 views x 2 rgb, then 2 ir

    class Fixed(torch.nn.Module):
        def forward(self, x_rgb, x_ir):
            return type("Out", (), {"feat": feat.clone().requires_grad_(True)})()

    y = torch.tensor([0, 1])
    rgb_batch = ((torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)), y, None, None)
    ir_batch = (torch.zeros(2, 3, 4, 4), y, None, None)
    cents = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)

    def memory():
        m = ClusterMemory(8, 2)
        m.set_centroids(cents.clone())
        return m

    shared = memory()
    losses = memory_step(Fixed(), rgb_batch, ir_batch, shared, shared, torch.device("cpu"))
    sum(losses.values()).backward()

    def replay(first_ir: bool):
        m = memory()
        x = feat.clone().requires_grad_(True)
        parts = [(x[4:], y), (x[:4], torch.cat([y, y]))]
        loss = sum(m(f, t) for f, t in (parts if first_ir else parts[::-1]))
        loss.backward()
        return m.features

    assert torch.allclose(shared.features, replay(first_ir=True))
    assert not torch.allclose(shared.features, replay(first_ir=False))
