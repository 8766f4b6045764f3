"""Stage-2 losses against direct, loop-based formulas (values and input gradients)."""

import pytest
import torch
import torch.nn.functional as F

from model.losses import (ViewInputs, batch_hard_triplet, inter_modality_loss, intra_modality_loss, mmd2,
                          prototype_distance, soft_id_loss)

DT = torch.float64  # references are compared to 1e-5; float64 keeps rounding out of the way
ATOL = 1e-5




def _leaf(*shape, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=DT) * scale).requires_grad_(True)


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _close(x, y):
    assert x is not None and y is not None
    torch.testing.assert_close(x, y, atol=ATOL, rtol=1e-5)


# ---------------------------------------------------------------- references (explicit loops)

def ref_triplet(feats, labels, margin):
    terms = []
    for i in range(len(labels)):
        pos = [torch.clamp(((feats[i] - feats[j]) ** 2).sum(), min=1e-12).sqrt()
               for j in range(len(labels)) if labels[j] == labels[i]]
        neg = [torch.clamp(((feats[i] - feats[j]) ** 2).sum(), min=1e-12).sqrt()
               for j in range(len(labels)) if labels[j] != labels[i]]
        if neg:
            terms.append(torch.relu(torch.stack(pos).max() - torch.stack(neg).min() + margin))
    return torch.stack(terms).mean()


def ref_mmd(x, y):
    """Direct MMD² of method.md F.6.4 (bandwidth on detached data)."""
    z = torch.cat([x, y])
    n = z.shape[0]
    sq = [[((z[i] - z[j]) ** 2).sum() for j in range(n)] for i in range(n)]
    beta = sum(float(sq[i][j].detach()) for i in range(n) for j in range(n)) / (n * n - n)
    sigmas = [beta / 4 * 2 ** q for q in range(5)]

    def kern(i, j):
        return sum(torch.exp(-sq[i][j] / s) for s in sigmas)

    m = x.shape[0]
    xs, ys = range(m), range(m, n)

    def block(rows, cols):
        return sum(kern(i, j) for i in rows for j in cols) / (len(rows) * len(cols))

    return block(xs, xs) + block(ys, ys) - block(xs, ys) - block(ys, xs)


def ref_inter(a, b, t, y, z):
    total = 0.0
    classes = sorted(set(y.tolist()))
    for c in classes:
        ia = [k for k in range(len(y)) if y[k] == c]
        it = [k for k in range(len(z)) if z[k] == c]
        if not it:
            continue
        A, B, T = a[ia], b[ia], t[it]
        total = total + ref_mmd(A, T.detach()) + ref_mmd(B, T.detach()) \
            + ref_mmd(T, A.detach()) + ref_mmd(T, B.detach())
    return total / len(classes)


# ---------------------------------------------------------------- soft identity

def test_soft_id_weighted_and_plain():
    logits = _leaf(7, 5, seed=1)
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    weights = torch.rand(7, dtype=DT, generator=torch.Generator().manual_seed(2))
    got = soft_id_loss(logits, targets, weights)
    ref = sum(weights[k] * -F.log_softmax(logits[k], 0)[targets[k]] for k in range(7)) / 7
    _close(got, ref)
    _close(_grads(got, logits)[0], _grads(ref, logits)[0])
    plain = soft_id_loss(logits, targets)
    _close(plain, F.cross_entropy(logits, targets))


# ---------------------------------------------------------------- triplet

def test_triplet_known_answer_1d():
    # labels 0: {0, 1}, 1: {3, 6}; margin 0.2
    feats = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=DT)
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1, neg 3 -> relu(1-3+.2)=0 ; anchor 1: pos 1, neg 2 -> 0
    # anchor 3: pos 3, neg 2 -> 1.2 ; anchor 6: pos 3, neg 5 -> 0
    got = batch_hard_triplet(feats, labels, margin=0.2)
    assert abs(float(got) - 1.2 / 4) < 1e-6


def test_triplet_singleton_positive_is_self_and_no_negative_excluded():
    feats = torch.tensor([[0.0], [0.5], [2.0]], dtype=DT)
    labels = torch.tensor([0, 1, 1])
    # anchor 0: pos itself (1e-6), neg min(0.5, 2) -> relu(1e-6-0.5+0.2)=0
    # anchor 0.5: pos 1.5, neg .5 -> 1.2 ; anchor 2: pos 1.5, neg 2 -> 0
    got = batch_hard_triplet(feats, labels, margin=0.2)
    assert abs(float(got) - 1.2 / 3) < 1e-6
    only_one_label = batch_hard_triplet(feats, torch.zeros(3, dtype=torch.long))
    assert float(only_one_label) == 0.0


def test_triplet_matches_loops():
    feats = _leaf(12, 6, seed=3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 3, 1])
    got = batch_hard_triplet(feats, labels, margin=0.3)
    ref = ref_triplet(feats, labels, 0.3)
    _close(got, ref)
    _close(_grads(got, feats)[0], _grads(ref, feats)[0])


# ---------------------------------------------------------------- intra-modality

def test_prototype_distance_kinds():
    f, p = _leaf(4, 3, seed=4), _leaf(4, 3, seed=5)
    for kind, fn in (("l1", lambda d: d.abs()), ("l2", lambda d: d ** 2)):
        got = prototype_distance(f, p, kind)
        ref = torch.stack([sum(fn(f[k, d] - p[k, d]) for d in range(3)) / 3 for k in range(4)])
        _close(got, ref)
    with pytest.raises(ValueError):
        prototype_distance(f, p, "cos")


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_intra_matches_loops_and_detaches_prototypes(kind):
    n, d, k = 6, 5, 4
    a, b, t = _leaf(n, d, seed=6), _leaf(n, d, seed=7), _leaf(n, d, seed=8)
    y = torch.tensor([0, 0, 1, 1, 3, 3])
    z = torch.tensor([0, 0, 1, 1, 2, 2])
    pa, pb, pt = (torch.rand(n, dtype=DT, generator=torch.Generator().manual_seed(s)) for s in (9, 10, 11))
    protos = [_leaf(k, d, seed=s) for s in (12, 13, 14)]
    got = intra_modality_loss(ViewInputs(a, y, protos[0], pa), ViewInputs(b, y, protos[1], pb),
                              ViewInputs(t, z, protos[2], pt), kind=kind)

    def ell(u, w):
        return sum((abs(u[i] - w[i]) if kind == "l1" else (u[i] - w[i]) ** 2) for i in range(d)) / d

    ref = 0.0
    for j in range(n):
        ref = ref + 0.5 * (pa[j] * ell(a[j], protos[0][y[j]].detach())
                           + pb[j] * ell(b[j], protos[1][y[j]].detach())) \
            + pt[j] * ell(t[j], protos[2][z[j]].detach())
    ref = ref / n
    _close(got, ref)
    g_got = _grads(got, [a, b, t] + protos)
    g_ref = _grads(ref, [a, b, t])
    for x, r in zip(g_got[:3], g_ref):
        _close(x, r)
    assert all(g is None for g in g_got[3:]), "prototypes must be detached"


# ---------------------------------------------------------------- MMD

def test_mmd2_matches_direct_formula():
    x, y = _leaf(4, 3, seed=15), _leaf(4, 3, seed=16, scale=2.0)
    got = mmd2(x, y)
    ref = ref_mmd(x, y)
    _close(got, ref)
    for g, r in zip(_grads(got, [x, y]), _grads(ref, [x, y])):
        _close(g, r)


def test_mmd2_unequal_sizes_and_identity():
    x, y = _leaf(3, 4, seed=17), _leaf(5, 4, seed=18)
    _close(mmd2(x, y), ref_mmd(x, y))
    assert abs(float(mmd2(x, x.detach().clone()).detach())) < 1e-12


def _inter_inputs(y_list, z_list, d=4, seed=20):
    a = _leaf(len(y_list), d, seed=seed)
    b = _leaf(len(y_list), d, seed=seed + 1)
    t = _leaf(len(z_list), d, seed=seed + 2, scale=1.5)
    return a, b, t, torch.tensor(y_list), torch.tensor(z_list)


def _check_inter(a, b, t, y, z):
    got = inter_modality_loss(a, b, t, y, z)
    ref = ref_inter(a, b, t, y, z)
    _close(got, ref)
    for g, r in zip(_grads(got, [a, b, t]), _grads(ref, [a, b, t])):
        _close(g, r)
    return got


def test_inter_matches_loops_equal_counts():
    _check_inter(*_inter_inputs([0, 0, 0, 2, 2, 2, 5, 5, 5], [0, 0, 0, 2, 2, 2, 5, 5, 5]))


def test_inter_duplicated_class_and_absent_ir_class():
    # class 1 drawn twice (2P rows), class 4 has no IR rows, IR class 9 has no RGB rows
    y = [1, 1, 3, 3, 1, 1, 4, 4]
    z = [1, 1, 3, 3, 1, 1, 9, 9]
    _check_inter(*_inter_inputs(y, z, seed=30))
    # unequal A/T sizes within a class
    _check_inter(*_inter_inputs([0, 0, 0, 1, 1], [0, 1, 1, 1, 0, 0], seed=40))


def test_inter_stop_gradient_sides():
    """grad wrt t comes only from D(T, sg A) + D(T, sg B); grad wrt a only from D(A, sg T)."""
    a, b, t, y, z = _inter_inputs([0, 0, 1, 1], [0, 0, 1, 1], seed=50)
    got = inter_modality_loss(a, b, t, y, z)
    g_a, g_b, g_t = _grads(got, [a, b, t])
    classes = [0, 1]
    only_t = sum(ref_mmd(t[z == c], a[y == c].detach()) + ref_mmd(t[z == c], b[y == c].detach())
                 for c in classes) / 2
    only_a = sum(ref_mmd(a[y == c], t[z == c].detach()) for c in classes) / 2
    _close(g_t, _grads(only_t, [t])[0])
    _close(g_a, _grads(only_a, [a])[0])
    # and a term with T detached really gives T no gradient
    no_t = mmd2(a[y == 0], t[z == 0].detach())
    assert _grads(no_t, [a, t])[1] is None


def test_inter_float32_large_features_finite():
    gen = torch.Generator().manual_seed(60)
    a = (torch.rand(24, 2048, generator=gen) * 3).requires_grad_(True)
    b = (torch.rand(24, 2048, generator=gen) * 3).requires_grad_(True)
    t = (torch.rand(24, 2048, generator=gen) * 3).requires_grad_(True)
    y = torch.arange(6).repeat_interleave(4)
    loss = inter_modality_loss(a, b, t, y, y.clone())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(x.grad).all() for x in (a, b, t))
