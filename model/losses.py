"""Stage-2 (SCA) training losses of MMM, vectorised over the batch (method.md F.6, G).

Notation as in method.md F.6: ``a``, ``b`` = GeM features of RGB views 1 and 2, ``t`` = GeM features
of the IR images, ``y`` / ``z`` their pseudo-labels, ``pa``, ``pb``, ``pt`` the GMM clean
probabilities. The λ weights (``--sm_w``, ``--md_w``) are applied by the caller.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

_SQRT_MIN = 1e-12  # clamp before sqrt in the triplet distances (released value)
_BW_MIN = 1e-12  # floor of the MMD bandwidth: only bites when all features of a set coincide
_N_KERNELS = 5  # Gaussian mixture: sigma_q = beta / 4 * 2^q, q = 0..4
_KERNEL_MUL = 2.0


def soft_id_loss(logits: torch.Tensor, targets: torch.Tensor,
                 weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Confidence-weighted identity loss ``(1/N) Σ_k w_k · CE(logits_k, targets_k)``.

    Args: ``logits (N, C)``, ``targets (N,)`` int64, ``weights (N,)`` (clean probabilities) or
    ``None`` for the plain mean cross-entropy. Returns a scalar.
    """
    ce = F.cross_entropy(logits, targets, reduction="none")
    if weights is None:
        return ce.mean()
    return (weights.to(ce.dtype) * ce).mean()


def _pairwise_sq(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared Euclidean distances ``‖x_i − y_j‖²`` via ``|x|² + |y|² − 2x·y``, clamped at 0.

    ``y=None`` means ``y = x`` and then the diagonal is set to exactly 0 (the expansion leaves
    rounding noise there, which matters for large un-normalised features).
    """
    other = x if y is None else y
    sq = x.pow(2).sum(1, keepdim=True) + other.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ other.t()
    sq = sq.clamp(min=0.0)
    if y is None:
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        sq = sq.masked_fill(eye, 0.0)
    return sq


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor,
                       margin: float = 0.2) -> torch.Tensor:
    """Batch-hard triplet loss (``OriTripletLoss`` of the release).

    With ``d(i, j) = sqrt(max(‖f_i − f_j‖², 1e-12))``, for each anchor ``i`` that has at least one
    sample of another label::

        L = mean_i relu( max_{j: l_j = l_i} d(i, j) − min_{j: l_j ≠ l_i} d(i, j) + margin )

    The positive set includes the anchor itself (distance 1e-6). ``features (N, D)``, ``labels (N,)``.
    Returns a scalar (0 with a graph when no anchor has a negative).
    """
    dist = _pairwise_sq(features).clamp(min=_SQRT_MIN).sqrt()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    hardest_pos = dist.masked_fill(~same, float("-inf")).max(dim=1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(dim=1).values
    valid = (~same).any(dim=1)
    losses = F.relu(hardest_pos - hardest_neg + margin)
    # Masked mean instead of losses[valid] (a host sync on a GPU); 0 with a graph when nothing is valid.
    return torch.where(valid, losses, 0.0).sum() / valid.sum().clamp(min=1)


def prototype_distance(features: torch.Tensor, prototypes: torch.Tensor,
                       kind: str = "l1") -> torch.Tensor:
    """Per-sample distance ``(N,)`` between ``features (N, D)`` and matching ``prototypes (N, D)``.

    ``kind="l1"``: ``(1/D) Σ_d |f_d − μ_d|`` (the release's mean absolute error).
    ``kind="l2"``: ``(1/D) Σ_d (f_d − μ_d)²`` (the paper's squared L2, divided by D so that both
    kinds live on the same per-dimension scale and ``--sm_w`` keeps its meaning).
    """
    diff = features - prototypes
    if kind == "l1":
        return diff.abs().mean(dim=1)
    if kind == "l2":
        return diff.pow(2).mean(dim=1)
    raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")


class ViewInputs(NamedTuple):
    """One view's share of :func:`intra_modality_loss` (RGB view 1, RGB view 2 or IR).

    Attributes:
        features: ``(n, D)`` GeM features of the view (``a``, ``b`` or ``t``).
        labels: ``(n,)`` int64 pseudo-labels (``y`` for both RGB views, ``z`` for IR).
        prototypes: ``(K, D)`` prototype table of the view, indexed by label (detached in the loss).
        weights: ``(n,)`` clean probabilities (``pa``, ``pb`` or ``pt``), or ``None`` for 1.
    """

    features: torch.Tensor
    labels: torch.Tensor
    prototypes: torch.Tensor
    weights: Optional[torch.Tensor] = None


def intra_modality_loss(rgb1: ViewInputs, rgb2: ViewInputs, ir: ViewInputs, kind: str = "l1") -> torch.Tensor:
    """Self-mimic / intra-modality loss (method.md F.6.3), without the λ factor.

    ``L = (1/n) Σ_k [ ½(pa_k ℓ(a_k, μa[y_k]) + pb_k ℓ(b_k, μb[y_k])) + pt_k ℓ(t_k, μt[z_k]) ]``

    ``rgb1`` = (a, y, μa, pa), ``rgb2`` = (b, y, μb, pb), ``ir`` = (t, z, μt, pt) (:class:`ViewInputs`):
    features ``(n, D)``, labels ``(n,)``, prototype tables ``(K, D)`` indexed by label, detached (sg),
    weights ``(n,)`` or ``None`` for 1; ``ℓ`` = :func:`prototype_distance` of ``kind``. Returns a scalar.
    """
    def term(view: ViewInputs) -> torch.Tensor:
        """Weighted per-sample distance ``(n,)`` to the detached prototype of each label."""
        dist = prototype_distance(view.features, view.prototypes.detach()[view.labels], kind)
        return dist if view.weights is None else view.weights.to(dist.dtype) * dist

    rgb = 0.5 * (term(rgb1) + term(rgb2))
    return (rgb + term(ir)).mean()


def _gaussian_mixture(sq: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``κ = Σ_q exp(−S / σ_q)`` with ``σ_q = (β/4)·2^q``; ``beta`` broadcasts against ``sq``."""
    base = beta.clamp(min=_BW_MIN) / _KERNEL_MUL ** (_N_KERNELS // 2)
    return sum(torch.exp(-sq / (base * _KERNEL_MUL ** q)) for q in range(_N_KERNELS))


def mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared MMD (biased V-statistic) with the release's 5-kernel Gaussian mixture.

    With ``Z = [x; y]`` (``n = m + m'`` rows), ``S_ij = ‖z_i − z_j‖²``,
    ``β = Σ_ij sg(S_ij) / (n² − n)``, ``σ_q = (β/4)·2^q`` for ``q = 0..4`` and
    ``κ = Σ_q exp(−S/σ_q)``::

        D = mean κ_XX + mean κ_YY − mean κ_XY − mean κ_YX      (diagonals included)

    ``x (m, D)``, ``y (m', D)``; pass ``y.detach()`` for a stop-gradient target. Returns a scalar.
    """
    m = x.shape[0]
    z = torch.cat([x, y], dim=0)
    n = z.shape[0]
    sq = _pairwise_sq(z)
    beta = sq.detach().sum() / max(n * n - n, 1)
    k = _gaussian_mixture(sq, beta)
    return k[:m, :m].mean() + k[m:, m:].mean() - k[:m, m:].mean() - k[m:, :m].mean()


def _block_means(kernel: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 n_rows: torch.Tensor, n_cols: torch.Tensor) -> torch.Tensor:
    """Per class ``c``: mean of ``kernel[i, j]`` over rows ``i`` and cols ``j`` of class ``c`` → ``(C,)``.

    ``rows``/``cols`` are ``(C, R)`` 0/1 masks; counts are clamped at 1 so absent sets give 0, not NaN.
    """
    total = torch.einsum("ci,ij,cj->c", rows, kernel, cols)
    return total / (n_rows.clamp(min=1) * n_cols.clamp(min=1))


def _class_masks(y: torch.Tensor, z: torch.Tensor, dtype: torch.dtype
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-hot row masks ``(n, 3n)`` of the a-, b- and t-rows of ``[a; b; t]`` for the distinct labels of
    ``y`` in increasing order, then all-zero rows up to n rows; and the number of distinct labels (a
    0-dim tensor).

    ``torch.unique`` would give exactly the distinct rows, but its size must be read on the host (a sync
    on a GPU); here the distinct values are the starts of the runs of the sorted labels, moved to the
    front by a stable sort, and the other rows get the label −1, which no sample has.
    """
    sorted_y = torch.sort(y).values
    start = torch.ones_like(sorted_y, dtype=torch.bool)
    start[1:] = sorted_y[1:] != sorted_y[:-1]
    front = torch.argsort((~start).to(torch.uint8), stable=True)
    classes = torch.where(start[front], sorted_y[front], -1)
    rgb = (y.unsqueeze(0) == classes.unsqueeze(1)).to(dtype)  # (n, n)
    ir = (z.unsqueeze(0) == classes.unsqueeze(1)).to(dtype)  # (n, n'); z-classes not in y: no row
    zeros_rgb, zeros_ir = torch.zeros_like(rgb), torch.zeros_like(ir)
    mask_a = torch.cat([rgb, zeros_rgb, zeros_ir], dim=1)
    mask_b = torch.cat([zeros_rgb, rgb, zeros_ir], dim=1)
    mask_t = torch.cat([zeros_rgb, zeros_rgb, ir], dim=1)
    return mask_a, mask_b, mask_t, start.sum()


def inter_modality_loss(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor,
                        y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mutual-distillation / inter-modality loss (method.md F.6.4), without the λ factor.

    With ``C`` the distinct labels of ``y``, ``A_c, B_c = {a_k}, {b_k} : y_k = c`` and
    ``T_c = {t_k : z_k = c}``::

        L = (1/|C|) Σ_c [ D(A_c, sg T_c) + D(B_c, sg T_c) + D(T_c, sg A_c) + D(T_c, sg B_c) ]

    ``D`` = :func:`mmd2` (bandwidth from the stacked pair, so the A/T terms share one β_c and the B/T
    terms another). Classes with an empty ``T_c`` contribute 0 (still counted in ``|C|``).

    Vectorised over classes: one Gram matrix of ``R = [a; b; t]`` gives ``S`` with both sides live,
    ``S^sg`` fully detached and ``S^half`` (rows live, columns detached); every within-class block mean
    is a masked sum ``einsum(mask_c, κ, mask_c)``. Per pair the bandwidth is that of the row's class
    (pairs across classes are masked out). Since ``κ`` is symmetric, ``mean κ_XY + mean κ_YX`` of
    ``D(X, sg Y)`` equals ``2·mean κ^half_XY`` in value and gradient.
    ``a, b (n, D)``, ``t (n', D)``, ``y (n,)``, ``z (n',)``. Returns a scalar.
    """
    feats = torch.cat([a, b, t], dim=0)
    sq_live = _pairwise_sq(feats)
    sq_sg = sq_live.detach()
    sq_half = _pairwise_sq(feats, feats.detach())
    m_a, m_b, m_t, num_classes = _class_masks(y, z, feats.dtype)
    n_a, n_t = m_a.sum(1), m_t.sum(1)
    row_class = m_a + m_b + m_t  # (C, R): each row in at most one class
    losses = feats.new_zeros(m_a.shape[0])
    for m_x in (m_a, m_b):  # the two RGB views; fixed 2-way unroll, not a loop over samples/classes
        union = m_x + m_t
        n_tot = n_a + n_t
        beta = torch.einsum("ci,ij,cj->c", union, sq_sg, union) / (n_tot * n_tot - n_tot).clamp(min=1)
        beta_row = (row_class.t() @ beta).unsqueeze(1)  # (R, 1) bandwidth of each row's class
        k_live = _gaussian_mixture(sq_live, beta_row)
        k_sg = _gaussian_mixture(sq_sg, beta_row)
        k_half = _gaussian_mixture(sq_half, beta_row)
        xx_live = _block_means(k_live, m_x, m_x, n_a, n_a)
        tt_live = _block_means(k_live, m_t, m_t, n_t, n_t)
        xx_sg = _block_means(k_sg, m_x, m_x, n_a, n_a)
        tt_sg = _block_means(k_sg, m_t, m_t, n_t, n_t)
        x_to_t = _block_means(k_half, m_x, m_t, n_a, n_t)  # rows X live, T detached
        t_to_x = _block_means(k_half, m_t, m_x, n_t, n_a)  # rows T live, X detached
        losses = losses + (xx_live + tt_sg - 2.0 * x_to_t) + (tt_live + xx_sg - 2.0 * t_to_x)
    present = (n_t > 0).to(losses.dtype)  # also 0 on the padding rows of _class_masks
    return (losses * present).sum() / num_classes
