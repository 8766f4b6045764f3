"""Tests of clustering.matching and clustering.mmlm (method E.1-E.3, G)."""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from clustering.matching import assign, cost_matrix, match_clusters
from clustering.mmlm import MatchOptions, cluster_memories, multi_memory_matching


def _loop_cost(mem_rgb, mem_ir, cost):
    """Direct formula: ir2rgb C[v,r] = Σ_i min_j ‖c^r_i − c^v_j‖, rgb2ir C[v,r] = Σ_j min_i ‖...‖."""
    out = np.zeros((len(mem_rgb), len(mem_ir)))
    for v, cv in enumerate(mem_rgb):
        for r, cr in enumerate(mem_ir):
            d = np.array([[np.linalg.norm(cr[i] - cv[j]) for j in range(len(cv))] for i in range(len(cr))])
            out[v, r] = d.min(1).sum() if cost == "ir2rgb" else d.min(0).sum()
    return out


@pytest.mark.parametrize("cost", ["ir2rgb", "rgb2ir"])
def test_cost_matrix_matches_loop(cost):
    rng = np.random.default_rng(0)
    mv = rng.standard_normal((5, 4, 7))
    mr = rng.standard_normal((6, 3, 7))                  # different memory counts are allowed
    c = cost_matrix(torch.from_numpy(mv), mr, cost=cost)
    assert c.shape == (5, 6)
    np.testing.assert_allclose(c.numpy(), _loop_cost(mv, mr, cost), rtol=1e-6, atol=1e-8)


def test_cost_directions_differ():
    rng = np.random.default_rng(1)
    mv, mr = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    assert not np.allclose(cost_matrix(mv, mr, "ir2rgb"), cost_matrix(mv, mr, "rgb2ir"))


def _synthetic(n_clusters=12, per_sub=6, dim=32, seed=0, ir_ids=None, rgb_ids=None):
    """IR clusters with 4 sub-centres each; RGB clusters = permuted IR clusters + shift + noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)) * 4.0
    subs = centres[:, None, :] + rng.standard_normal((n_clusters, 4, dim))   # multi-memory structure
    shift = rng.standard_normal(dim) * 0.4                                   # modality gap
    perm = rng.permutation(n_clusters)              # RGB cluster v shows identity perm[v]
    ir_ids = np.arange(n_clusters) if ir_ids is None else np.asarray(ir_ids)
    rgb_ids = np.arange(n_clusters) if rgb_ids is None else np.asarray(rgb_ids)

    def draw(identities, ids, offset):
        """per_sub noisy samples around each of the 4 sub-centres of every listed identity."""
        x, lab = [], []
        for pos, ident in enumerate(identities):
            pts = subs[ident].repeat(per_sub, 0) + offset + 0.15 * rng.standard_normal((4 * per_sub, dim))
            x.append(pts)
            lab.append(np.full(len(pts), ids[pos]))
        return np.concatenate(x).astype(np.float32), np.concatenate(lab)

    f_ir, l_ir = draw(np.arange(n_clusters), ir_ids, 0.0)
    f_rgb, l_rgb = draw(perm, rgb_ids, shift)
    return f_rgb, l_rgb, f_ir, l_ir, perm, ir_ids, rgb_ids


@pytest.mark.parametrize("matching", ["greedy", "hungarian"])
@pytest.mark.parametrize("cost", ["ir2rgb", "rgb2ir"])
def test_recovers_known_permutation(matching, cost):
    f_rgb, l_rgb, f_ir, l_ir, perm, ir_ids, rgb_ids = _synthetic()
    mem_v, ids_v = cluster_memories(f_rgb, l_rgb)
    mem_r, ids_r = cluster_memories(f_ir, l_ir)
    assert mem_v.shape == (12, 4, 32)
    partner = match_clusters(mem_v, mem_r, matching=matching, cost=cost)
    np.testing.assert_array_equal(partner, perm)
    new = multi_memory_matching(f_rgb, l_rgb, f_ir, l_ir, MatchOptions(matching=matching, cost=cost))
    np.testing.assert_array_equal(new, ir_ids[perm][np.searchsorted(rgb_ids, l_rgb)])


def test_non_contiguous_labels_outliers_and_largest_label():
    ir_ids = np.array([5, 7, 11, 40, 41, 60, 61, 62, 90, 100, 200, 999])
    rgb_ids = np.array([3, 4, 10, 12, 13, 20, 30, 31, 42, 50, 77, 500])
    f_rgb, l_rgb, f_ir, l_ir, perm, _, _ = _synthetic(ir_ids=ir_ids, rgb_ids=rgb_ids, seed=2)
    rng = np.random.default_rng(3)
    out = rng.random(len(l_rgb)) < 0.1
    l_rgb = np.where(out, -1, l_rgb)
    new, info = multi_memory_matching(f_rgb, l_rgb, f_ir, l_ir, return_info=True)
    assert np.all(new[out] == -1)                                   # outliers stay −1
    expected = ir_ids[perm][np.searchsorted(rgb_ids, l_rgb[~out])]
    np.testing.assert_array_equal(new[~out], expected)
    np.testing.assert_array_equal(info["cluster_ids_rgb"], rgb_ids)
    np.testing.assert_array_equal(info["cluster_ids_ir"], ir_ids)
    # the largest RGB label (500) takes part, and the largest IR label (999) can be a partner
    big = l_rgb == 500
    assert big.any() and np.all(new[big] == ir_ids[perm[-1]])
    v_of_999 = int(np.nonzero(perm == len(ir_ids) - 1)[0][0])
    assert np.all(new[l_rgb == rgb_ids[v_of_999]] == 999)
    assert info["ir_unmatched"] == 0 and info["rgb_shared"] == 0
    assert set(info) >= {"partner", "cost", "ir_unmatched", "rgb_shared", "seconds"}


def test_hungarian_one_to_one_when_fewer_visible():
    rng = np.random.default_rng(4)
    for _ in range(5):
        c = rng.random((6, 9))
        c[:, 0] = 0.0                                   # greedy would send every row to column 0
        p = assign(c, "hungarian")
        assert len(set(p.tolist())) == 6
        rows, cols = linear_sum_assignment(c)
        np.testing.assert_array_equal(p[rows], cols)
        assert np.all(assign(c, "greedy") == 0)


def test_hungarian_leftovers_take_least_cost_partner():
    c = np.array([[0.1, 5.0],
                  [0.2, 5.0],
                  [5.0, 0.3],
                  [0.4, 0.5]])
    p = assign(c, "hungarian")
    rows, cols = linear_sum_assignment(c)
    left = np.setdiff1d(np.arange(4), rows)
    assert len(left) == 2
    np.testing.assert_array_equal(p[rows], cols)                    # one-to-one part
    np.testing.assert_array_equal(p[left], c[left].argmin(1))       # leftovers: greedy rule
    assert set(p.tolist()) == {0, 1}


def test_greedy_many_to_one_and_ties():
    base = np.zeros((1, 4, 3))
    mem_ir = np.concatenate([base, base + 10.0])                    # two IR clusters
    mem_rgb = np.concatenate([base + 0.1, base - 0.2, base + 9.0])  # two RGB clusters near IR 0
    p = match_clusters(torch.from_numpy(mem_rgb), torch.from_numpy(mem_ir), matching="greedy")
    np.testing.assert_array_equal(p, [0, 0, 1])
    assert p.dtype == np.int64
    np.testing.assert_array_equal(assign(np.ones((2, 3)), "greedy"), [0, 0])   # first among ties


def test_no_infrared_clusters():
    p = match_clusters(np.zeros((3, 4, 2)), np.zeros((0, 4, 2)))
    np.testing.assert_array_equal(p, [-1, -1, -1])
    f = np.random.default_rng(5).standard_normal((8, 2)).astype(np.float32)
    new = multi_memory_matching(f, np.array([0, 0, 0, 0, 1, 1, 1, -1]), f, np.full(8, -1))
    assert np.all(new == -1)


def test_invalid_options():
    with pytest.raises(ValueError):
        cost_matrix(np.zeros((1, 4, 2)), np.zeros((1, 4, 2)), cost="both")
    with pytest.raises(ValueError):
        match_clusters(np.zeros((1, 4, 2)), np.zeros((1, 4, 2)), matching="auction")


def test_cluster_memories_every_cluster_and_small_ones():
    rng = np.random.default_rng(6)
    labels = np.array([2] * 10 + [9] * 3 + [-1] * 2 + [4] * 6)
    f = rng.standard_normal((len(labels), 5)).astype(np.float32)
    mem, ids = cluster_memories(torch.from_numpy(f), torch.from_numpy(labels))
    np.testing.assert_array_equal(ids, [2, 4, 9])
    assert mem.shape == (3, 4, 5)
    np.testing.assert_array_equal(mem[2].numpy(), f[labels == 9][[0, 1, 2, 0]])


def test_matching_ari_keys_and_known_answers():
    from clustering.ari import matching_ari, pseudo_label_ari

    gt_rgb, gt_ir = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    r = matching_ari(gt_rgb + 10, gt_rgb, gt_ir + 10, gt_ir)
    assert list(r) == ["ari_rgb", "ari_ir", "ari_joint"] and all(v == pytest.approx(1.0) for v in r.values())
    assert matching_ari(gt_rgb, gt_rgb, gt_ir + 10, gt_ir)["ari_joint"] < 1.0     # label spaces not aligned
    # stage 1: the joint clustering is its own labelling of [rgb; ir]
    joint = np.r_[gt_rgb, gt_ir] + 3
    r = pseudo_label_ari({"rgb": np.zeros(6, np.int64), "ir": gt_ir, "joint": joint}, {"rgb": gt_rgb, "ir": gt_ir})
    assert r == {"ari_rgb": 0.0, "ari_ir": pytest.approx(1.0), "ari_joint": pytest.approx(1.0)}
    assert list(pseudo_label_ari({"rgb": gt_rgb}, {"rgb": gt_rgb, "ir": gt_ir})) == ["ari_rgb"]
