"""Batched k-means of many small point sets at once (MMLM multi-memory learning, method E.1).

MMLM splits every DBSCAN cluster into ``k`` sub-clusters with ``sklearn.cluster.KMeans(n_clusters=4,
n_init=10, random_state=0)`` (k-means++ seeding with 2 + int(log k) greedy local trials, Lloyd,
keep the restart of lowest inertia, tolerance relative to the mean per-feature variance).  The
released code runs one KMeans per cluster; here all clusters and all restarts run together.

Kernel form.  k-means only needs inner products between points of the same group, so each group's
Gram matrix ``K = Xc Xc^T`` (features centred on the group mean, as sklearn does) is computed once
and a centre is represented by a weight row ``w`` over the group's members (c = Σ_j w_j x_j):

    ‖x_i − c‖² = K_ii − 2 (w K)_i + w K wᵀ .

k-means++ centres are one-hot rows, Lloyd centres 1/|S| over the members S; D-dim centres are formed
once at the end.  Groups are padded to the largest size of their *size bucket* (sizes within a factor
_BUCKET_RATIO); Python loops run only over buckets, k-means++ steps and Lloyd iterations.

Random numbers.  ``random_state=seed`` gives every sklearn fit a fresh ``RandomState(seed)``; per
restart k-means++ draws one uniform (first centre, via ``choice`` with p = 1/m) and ``n_trials``
uniforms per further centre.  The same stream is drawn here once and shared by all groups, so the
seeding follows sklearn's draws exactly; results agree with sklearn up to float rounding (near-ties).

Groups with m < k members (fallback, differs from the release, method E.1 step 3): the centres are
the members cycled to fill k rows (k-means with k ≥ m points has zero inertia with every point a
centre).  The release used the member mean as a single 1-row memory.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .knn import exact_float32

_BUCKET_RATIO = 1.3  # groups whose sizes differ by less than this factor share one padded batch


def _sklearn_uniforms(seed: int, n_init: int, k: int, n_trials: int) -> np.ndarray:
    """The uniforms sklearn's k-means++ draws from ``RandomState(seed)``: (n_init, 1 + (k−1)·n_trials)."""
    per_init = 1 + (k - 1) * n_trials
    return np.random.RandomState(seed).random_sample(n_init * per_init).reshape(n_init, per_init)


def _first_centres(sizes: np.ndarray, width: int, u0: np.ndarray, np_dtype) -> np.ndarray:
    """First k-means++ centre per (group, restart), as ``RandomState.choice(m, p=ones/m)`` picks it.

    choice builds cdf = cumsum(p) / cdf[-1] in the data dtype and returns searchsorted(cdf, u, 'right').
    sizes (B,), u0 (R,) -> (B, R) int64 indices in 0..m−1.
    """
    p = np.where(np.arange(width)[None, :] < sizes[:, None], np_dtype(1) / sizes.astype(np_dtype)[:, None], 0)
    cdf = np.cumsum(p.astype(np_dtype), axis=1)
    cdf /= cdf[np.arange(len(sizes)), sizes - 1][:, None]
    cdf[np.arange(width)[None, :] >= sizes[:, None]] = np.inf  # padding never selected
    return (cdf[:, None, :] <= u0[None, :, None]).sum(-1).astype(np.int64)


def _dist_to_points(gram: torch.Tensor, diag: torch.Tensor, valid: torch.Tensor,
                    idx: torch.Tensor) -> torch.Tensor:
    """Squared distances from members ``idx`` (B, P) to all members: (B, P, M), 0 on padding.

    ‖x_a − x_i‖² = K_aa − 2 K_ai + K_ii, clipped at 0 like sklearn's euclidean_distances.
    """
    rows = torch.gather(gram, 1, idx.unsqueeze(-1).expand(-1, -1, gram.shape[-1]))
    d = diag.gather(1, idx).unsqueeze(-1) - 2.0 * rows + diag.unsqueeze(1)
    return d.clamp_min(0.0) * valid.unsqueeze(1)


def _kmeanspp(gram, diag, valid, sizes, first, uniforms, k, n_trials) -> torch.Tensor:
    """Greedy k-means++ (sklearn ``_kmeans_plusplus``) for every (group, restart) in kernel form.

    gram (B, M, M), diag (B, M), valid (B, M) bool, sizes (B,), first (B, R) first centre indices,
    uniforms (R, 1 + (k−1)·T).  Each step samples T candidates with probability ∝ D(x)² (searchsorted
    of u·pot in cumsum D²) and keeps the one giving the lowest potential Σ_x min(D(x)², d(x, cand)²).
    Returns centre indices (B, R, k).
    """
    B, R = first.shape
    M = gram.shape[-1]
    closest = _dist_to_points(gram, diag, valid, first)             # (B, R, M)
    pot = closest.sum(-1)                                            # (B, R)
    chosen = [first]
    last = (sizes - 1).view(B, 1, 1)
    for c in range(1, k):
        u = uniforms[:, 1 + (c - 1) * n_trials: 1 + c * n_trials]    # (R, T)
        targets = u.unsqueeze(0) * pot.unsqueeze(-1)                 # (B, R, T)
        cand = torch.searchsorted(closest.cumsum(-1), targets.contiguous())
        cand = torch.minimum(cand, last)                             # sklearn's clip for rounding
        d = _dist_to_points(gram, diag, valid, cand.view(B, R * n_trials)).view(B, R, n_trials, M)
        d = torch.minimum(d, closest.unsqueeze(2))
        cand_pot = d.sum(-1)                                         # (B, R, T)
        best = cand_pot.argmin(-1, keepdim=True)                     # first among ties
        pot = cand_pot.gather(-1, best).squeeze(-1)
        closest = d.gather(2, best.unsqueeze(-1).expand(-1, -1, 1, M)).squeeze(2)
        chosen.append(cand.gather(-1, best).squeeze(-1))
    return torch.stack(chosen, -1)


def _assign(gram_w, weights, diag, k):
    """E-step: nearest of the k weighted centres for every member, and its squared distance.

    gram_w = W K (B, R·k, M); ‖x_i − c‖² = K_ii − 2 (W K)_ci + (W K Wᵀ)_cc, so the nearest centre
    maximises 2 (W K)_ci − ‖c‖².  Returns labels (B, R, M), dmin (B, R, M), ‖c‖² (B, R·k).
    """
    B, _, M = gram_w.shape
    cc = (gram_w * weights).sum(-1)                                  # (B, R·k) = ‖c‖²
    score = (2.0 * gram_w - cc.unsqueeze(-1)).view(B, -1, k, M)
    smax, labels = score.max(2)                                      # first centre among ties
    return labels, (diag.unsqueeze(1) - smax).clamp_min(0.0), cc


def _relocate(sums, labels, dmin, valid):
    """sklearn's empty-cluster handling on the member sums (B, R, k, M), in place.

    Empty cluster e (in index order) takes the e-th farthest point from its current centre (sklearn
    ``_relocate_empty_clusters_dense``: the point keeps its label but leaves its old cluster's sum);
    nothing moves when all distances are 0 (duplicate points).  Returns the counts (B, R, k).
    """
    B, R, k, M = sums.shape
    empty = sums.sum(-1) == 0
    far_d, far = dmin.masked_fill(~valid.view(B, 1, M), -1.0).topk(k, dim=-1)
    moved = far.gather(-1, (empty.cumsum(-1) - 1).clamp_min(0))      # (B, R, k) point per empty cluster
    act = (empty & (far_d[..., :1] > 0)).to(sums.dtype)
    flat = sums.view(B, R, k * M)
    flat.scatter_add_(-1, torch.arange(k, device=sums.device) * M + moved, act)
    flat.scatter_add_(-1, labels.gather(-1, moved) * M + moved, -act)
    return sums.sum(-1)


def _new_weights(labels, dmin, valid, k):
    """M-step on weights: W_c = 1_{S_c} / |S_c| (B, R·k, M), with sklearn's empty-cluster rules.

    A cluster still empty after :func:`_relocate` is placed at the centre of the largest cluster
    (sklearn ``_average_centers``).
    """
    B, R, M = labels.shape
    sums = torch.zeros(B, R, k, M, dtype=dmin.dtype, device=dmin.device)
    sums.scatter_(2, labels.unsqueeze(2), valid.to(dmin.dtype).view(B, 1, 1, M).expand(B, R, 1, M))
    counts = sums.sum(-1)
    if bool((counts == 0).any()):                                    # rare: needs relocation
        counts = _relocate(sums, labels, dmin, valid)
        w = sums / counts.clamp_min(1.0).unsqueeze(-1)
        largest = counts.argmax(-1, keepdim=True).unsqueeze(-1).expand(-1, -1, 1, M)
        w = torch.where((counts == 0).unsqueeze(-1), w.gather(2, largest), w)
    else:
        w = sums / counts.unsqueeze(-1)
    return w.reshape(B, R * k, M)


def _lloyd_step(st, k):
    """One Lloyd iteration on the live state ``st`` (dict of tensors), in place; see :func:`_lloyd`."""
    B, R = st["a"].shape
    labels, dmin, cc = _assign(st["gw"], st["w"], st["d"], k)
    w_new = _new_weights(labels, dmin, st["v"], k)
    gw_new = torch.bmm(w_new, st["g"])
    # Σ_c ‖c_new − c_old‖² = Σ_c (c_new·c_new − 2 c_new·c_old + c_old·c_old), all from W K
    shift = ((gw_new * (w_new - 2.0 * st["w"])).sum(-1) + cc).view(B, R, k).sum(-1)
    strict = ((labels == st["lo"]) | ~st["v"].unsqueeze(1)).all(-1)
    upd = st["a"].repeat_interleave(k, dim=1).unsqueeze(-1)          # frozen runs keep their state
    st["w"] = torch.where(upd, w_new, st["w"])
    st["gw"] = torch.where(upd, gw_new, st["gw"])
    st["lo"] = torch.where(st["a"].unsqueeze(-1), labels, st["lo"])
    st["a"] = st["a"] & ~(strict | (shift <= st["t"].unsqueeze(-1)))


def _lloyd(gram, diag, valid, init_idx, tol, k, max_iter):
    """Lloyd iterations (sklearn ``_kmeans_single_lloyd``) for every (group, restart) at once.

    A run stops when its labels do not change (strict convergence) or when the total squared centre
    shift Σ_c ‖c_new − c_old‖² ≤ tol (per group); its state is then frozen.  Groups whose restarts
    have all stopped leave the batch, so late iterations only touch the slow groups.
    init_idx (B, R, k) -> final weights (B, R·k, M), labels (B, R, M), inertia (B, R).
    """
    B, R, _ = init_idx.shape
    M = gram.shape[-1]
    w = F.one_hot(init_idx, M).to(gram.dtype).view(B, R * k, M)
    st = dict(g=gram, d=diag, v=valid, t=tol, w=w, gw=torch.bmm(w, gram),
              lo=torch.full((B, R, M), -1, dtype=torch.long, device=gram.device),
              a=torch.ones(B, R, dtype=torch.bool, device=gram.device))
    ids = torch.arange(B, device=gram.device)
    w_out, gw_out = torch.empty_like(w), torch.empty_like(w)
    for _ in range(max_iter):
        _lloyd_step(st, k)
        done = ~st["a"].any(1)
        if bool(done.any()):                                         # retire finished groups
            w_out[ids[done]], gw_out[ids[done]] = st["w"][done], st["gw"][done]
            keep = ~done
            ids, st = ids[keep], {n: t[keep] for n, t in st.items()}
            if ids.numel() == 0:
                break
    if ids.numel():                                                  # max_iter reached
        w_out[ids], gw_out[ids] = st["w"], st["gw"]
    labels, dmin, _ = _assign(gw_out, w_out, diag, k)                # final E-step (as sklearn)
    return w_out, labels, (dmin * valid.unsqueeze(1)).sum(-1)


def _centred_gram(xb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Gram matrices of the group-centred members (B, M, M) float64, zero on padding.

    sklearn subtracts the group mean before k-means; in kernel form that is double centring,
    Kc = K − r 1ᵀ − 1 rᵀ + s with r_i = (1/m) Σ_j K_ij and s = (1/m²) Σ_ij K_ij over the members.
    """
    vf = valid.to(torch.float64)
    gram = torch.bmm(xb, xb.transpose(1, 2)).double() * (vf.unsqueeze(1) * vf.unsqueeze(2))
    m = vf.sum(-1, keepdim=True)
    r = gram.sum(-1) / m                                             # (B, M)
    s = (r.sum(-1, keepdim=True) / m).unsqueeze(-1)                  # (B, 1, 1)
    gram = gram - r.unsqueeze(-1) - r.unsqueeze(1) + s
    return gram * (vf.unsqueeze(1) * vf.unsqueeze(2))


def _buckets(sizes: np.ndarray, ids: np.ndarray) -> list:
    """Split group ``ids`` (with member counts ``sizes``) into size buckets, smallest first.

    A bucket starts at the smallest remaining size s and takes every group of size ≤ _BUCKET_RATIO·s,
    so padding a bucket to its largest member count wastes at most a factor _BUCKET_RATIO² of work.
    """
    order = np.argsort(sizes, kind="stable")
    s = sizes[order]
    out, start = [], 0
    while start < len(s):
        stop = int(np.searchsorted(s, _BUCKET_RATIO * s[start], side="right"))
        out.append(ids[order[start:stop]])
        start = stop
    return out


def _padded_index(starts, sizes, width):
    """Row indices (B, width) into the group-sorted feature order and the validity mask."""
    ar = torch.arange(width, device=starts.device)
    valid = ar.unsqueeze(0) < sizes.unsqueeze(1)
    return torch.where(valid, starts.unsqueeze(1) + ar, starts.unsqueeze(1)), valid


def _kmeans_bucket(xb, valid, first, uniforms, k, n_trials, tol, max_iter):
    """All restarts of k-means for one size bucket: xb (B, M, D) padded members, valid (B, M) bool.

    first (B, R) first centres and uniforms as in :func:`_kmeanspp`. Returns centres (B, k, D) of the
    restart of lowest inertia (first among ties, as sklearn keeps the first best) and that inertia (B,).
    """
    (B, M, D), sizes_t = xb.shape, valid.sum(-1)        # sizes_t (B,) int64 member counts
    gram = _centred_gram(xb, valid)
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    tol_b = diag.sum(-1) / (sizes_t * D) * tol         # tol × mean per-feature variance (sklearn)
    init = _kmeanspp(gram, diag, valid, sizes_t, first, uniforms, k, n_trials)
    w, _, inert = _lloyd(gram, diag, valid, init, tol_b, k, max_iter)
    best = inert.argmin(-1)
    w = w.view(B, -1, k, M)[torch.arange(B, device=xb.device), best]
    centres = torch.bmm(w.to(xb.dtype), xb)             # rows of w sum to 1: uncentred means
    return centres, inert.gather(-1, best.unsqueeze(-1)).squeeze(-1)


def batched_kmeans(features: torch.Tensor, groups: torch.Tensor, k: int = 4, n_init: int = 10,
                   max_iter: int = 300, tol: float = 1e-4, seed: int = 0
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """k-means (sklearn KMeans defaults, ``random_state=seed``) of every group of ``features``.

    features (N, D) float tensor; groups (N,) int64 in 0..G−1, every group non-empty (rows with
    group −1 are ignored, which spares callers a copy of the features without their outliers).
    Minimises, per group g, Σ_{x ∈ g} min_c ‖x − c‖² over k centres (best of ``n_init`` k-means++
    restarts, Lloyd until labels are stable or Σ_c ‖Δc‖² ≤ tol·mean per-feature variance).
    Groups with m < k members return their members cycled to k rows (inertia 0). Returns centers
    (G, k, D) in the features' dtype/device and inertia (G,) float64.
    """
    if features.dim() != 2 or groups.dim() != 1 or groups.shape[0] != features.shape[0]:
        raise ValueError("features must be (N, D) and groups (N,)")
    if k < 1 or n_init < 1 or max_iter < 1 or features.shape[0] == 0:
        raise ValueError("need k, n_init, max_iter >= 1 and at least one point")
    dev = features.device
    groups = groups.to(device=dev, dtype=torch.long)
    if bool((groups < -1).any()):
        raise ValueError("groups must be >= 0 (or -1 for rows to ignore)")
    sizes_t = torch.bincount(groups[groups >= 0]) if bool((groups < 0).any()) else torch.bincount(groups)
    if sizes_t.numel() == 0:
        raise ValueError("no group: every row has group -1")
    if bool((sizes_t == 0).any()):
        raise ValueError("every group 0..G-1 must have at least one member (empty group found)")
    x = features if features.dtype in (torch.float32, torch.float64) else features.float()
    order = torch.argsort(groups, stable=True)    # members of group g: order[starts[g]:starts[g]+m_g]
    starts_t = torch.cumsum(sizes_t, 0) - sizes_t + (groups < 0).sum()   # ignored rows sort first
    centers = torch.empty(len(sizes_t), k, x.shape[1], dtype=x.dtype, device=dev)
    inertia = torch.zeros(len(sizes_t), dtype=torch.float64, device=dev)
    sizes = sizes_t.cpu().numpy()
    small = torch.as_tensor(np.nonzero(sizes < k)[0], device=dev)
    if small.numel():                             # fallback: members cycled to fill k rows
        rows = starts_t[small].unsqueeze(1) + torch.arange(k, device=dev) % sizes_t[small].unsqueeze(1)
        centers[small] = x[order[rows]]
    n_trials = 2 + int(math.log(k))               # sklearn's number of local seeding trials
    uni = _sklearn_uniforms(seed, n_init, k, n_trials)
    np_dtype = np.float32 if x.dtype == torch.float32 else np.float64
    for b in _buckets(sizes[sizes >= k], np.nonzero(sizes >= k)[0]):
        bt = torch.as_tensor(b, device=dev)
        width = int(sizes[b].max())
        idx, valid = _padded_index(starts_t[bt], sizes_t[bt], width)
        first = torch.as_tensor(_first_centres(sizes[b], width, uni[:, 0], np_dtype), device=dev)
        with exact_float32(dev):  # float32 without TF32 on a GPU; padding rows of x[order[idx]] repeat a member
            centers[bt], inertia[bt] = _kmeans_bucket(x[order[idx]], valid, first, torch.as_tensor(uni, device=dev),
                                                      k, n_trials, tol, max_iter)
    return centers.to(features.dtype), inertia
