"""Cluster memory with a momentum update in the backward pass (method D.2 step 8, G.1 "CMC").

The memory M (K, D) holds one unit-norm centre per pseudo-identity. The loss is the cluster-level
InfoNCE

    L = (1/B) Σ_b −log softmax_{y_b}( x̂_b Mᵀ / τ ),   x̂_b = x_b / ‖x_b‖,

with M treated as a constant for the gradient. After the gradient w.r.t. the inputs has been
computed, the memory rows of the classes in the batch are moved towards their samples:

* "sequential" (released default), in batch order:  M_y ← μ M_y + (1−μ) x̂,  M_y ← M_y / ‖M_y‖;
* "hard" (``use_hard=True``): per class, only the sample least similar to its current row is used.

The update lives in ``backward`` so it happens exactly once per optimiser step and only when the
loss is actually back-propagated (no update under ``torch.no_grad()`` or without ``backward``).
Under torchrun the caller gives the memory a ``gather`` (utils/distributed.py ``batch_gather``): the
update then gathers every process's batch, so all copies of the memory stay identical.

Host syncs: none in one process when the labels come on the CPU (the sequential update's schedule is
read from them in forward); under torchrun the gathered labels live on the GPU, so the sequential
update reads its schedule from there (one sync per update); the hard update never syncs.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def occurrence_rank(targets: torch.Tensor) -> torch.Tensor:
    """Rank of each sample among the earlier samples of its class, in batch order.

    rank_b = |{a < b : y_a = y_b}|, e.g. targets [3, 1, 3, 3, 1] → [0, 0, 1, 2, 1].

    Args:
        targets: (B,) integer tensor.

    Returns:
        (B,) int64 tensor on the device of ``targets``.
    """
    n = targets.numel()
    pos = torch.arange(n, device=targets.device)
    # A stable sort groups each class while keeping batch order inside the group.
    sorted_t, order = torch.sort(targets, stable=True)
    is_start = torch.ones(n, dtype=torch.bool, device=targets.device)
    is_start[1:] = sorted_t[1:] != sorted_t[:-1]
    group_start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), dim=0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - group_start
    return rank


def update_schedule(targets: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """The steps of :func:`sequential_update_` for (B,) class ids: (order (B,) int64, counts).

    Step r updates the samples ``order[sum(counts[:r]) : sum(counts[:r + 1])]``, the r-th occurrence of
    each class that has one. ``counts`` is read on the host, so computed from labels on the CPU (as the
    loader delivers them) it costs a GPU run no host sync; :class:`ClusterMemory` does that in forward.
    """
    rank = occurrence_rank(targets.long())
    return torch.argsort(rank, stable=True), torch.bincount(rank).tolist()


@torch.no_grad()
def sequential_update_(memory: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                       momentum: float, schedule: Optional[Tuple[torch.Tensor, List[int]]] = None) -> None:
    """In-place released momentum update, equivalent to a per-sample loop in batch order.

    For b = 1..B: M_{y_b} ← normalize(μ M_{y_b} + (1−μ) x_b).

    Vectorised over classes: step r updates at once every class that has an r-th occurrence in the
    batch (rows are distinct inside a step, so the steps reproduce the sequential order exactly). The
    number of steps is the largest per-class count in the batch (≤ 2 × --num-instances in stage 1). The
    steps cannot be merged: each class's next row depends on its previous one through the normalisation.

    Args:
        memory: (K, D) memory, modified in place.
        inputs: (B, D) unit-norm samples (already L2-normalised).
        targets: (B,) class ids in 0..K−1.
        momentum: μ, weight of the old row (0.1 in the released code: the new sample dominates).
        schedule: :func:`update_schedule` of ``targets`` if already known (else computed here, which on
            a GPU costs a host sync).
    """
    if targets.numel() == 0:
        return
    targets = targets.long()
    x = inputs.to(memory.dtype)
    order, counts = update_schedule(targets) if schedule is None else schedule
    for chunk in torch.split(order.to(targets.device, non_blocking=True), counts):
        rows = targets[chunk]
        memory[rows] = F.normalize(momentum * memory[rows] + (1.0 - momentum) * x[chunk], dim=1)


@torch.no_grad()
def hard_update_(memory: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                 momentum: float) -> None:
    """In-place "hard" momentum update (``--use-hard``).

    For each class c in the batch: h = argmin_{b: y_b = c} ⟨x_b, M_c⟩ (first such b on ties),
    then M_c ← normalize(μ M_c + (1−μ) x_h). One update per class, all classes at once.

    Args:
        memory: (K, D) memory, modified in place.
        inputs: (B, D) unit-norm samples.
        targets: (B,) class ids in 0..K−1.
        momentum: μ.
    """
    n = targets.numel()
    if n == 0:
        return
    targets = targets.long()
    x = inputs.to(memory.dtype)
    sims = (x * memory[targets]).sum(dim=1)
    num_classes = memory.shape[0]
    inf = torch.full((num_classes,), float("inf"), dtype=sims.dtype, device=sims.device)
    min_sim = inf.scatter_reduce(0, targets, sims, reduce="amin")
    # Among the samples reaching their class minimum keep the earliest one (deterministic ties).
    pos = torch.arange(n, device=targets.device)
    cand = torch.where(sims == min_sim[targets], pos, torch.full_like(pos, n))
    pick = torch.full((num_classes,), n, dtype=pos.dtype, device=pos.device)
    pick = pick.scatter_reduce(0, targets, cand, reduce="amin")
    # Every sample writes its class's new row: repeated rows receive identical values, so the result is
    # deterministic, and no host sync is needed to list the classes present.
    memory[targets] = F.normalize(momentum * memory[targets] + (1.0 - momentum) * x[pick[targets]], dim=1)


#: (B, D) inputs, (B,) targets -> every process's rows in rank order, (world x B, D) and (world x B,).
Gather = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class _MemoryProduct(torch.autograd.Function):
    """logits = x̂ Mᵀ; backward: grad_x = grad_logits · M (M constant), then momentum-update M."""

    @staticmethod
    def forward(ctx, inputs, targets, memory, momentum, use_hard, gather, schedule):
        """(B, D) unit inputs, (B,) targets, (K, D) memory → (B, K) logits x̂ Mᵀ; ``gather``: how the
        update collects the batches of every process (None: this process's only); ``schedule``: the
        sequential update's :func:`update_schedule` of ``targets`` or None."""
        ctx.memory = memory  # a live reference: the update below must reach the module's buffer
        ctx.momentum = momentum
        ctx.use_hard = use_hard
        ctx.gather = gather
        ctx.schedule = schedule
        ctx.save_for_backward(inputs, targets)
        return inputs.to(memory.dtype).mm(memory.t())

    @staticmethod
    def backward(ctx, grad_logits):
        """(B, K) grad → (B, D) grad_x = grad · M; then the in-place memory update."""
        inputs, targets = ctx.saved_tensors
        memory = ctx.memory
        grad_inputs = None
        if ctx.needs_input_grad[0]:
            # Computed BEFORE the update so the gradient uses the memory of the forward pass.
            grad_inputs = grad_logits.to(memory.dtype).mm(memory).to(inputs.dtype)
        alone = ctx.gather is None
        all_x, all_y = (inputs.detach(), targets) if alone else ctx.gather(inputs.detach(), targets)
        if ctx.use_hard:
            hard_update_(memory, all_x, all_y, ctx.momentum)
        else:  # the gathered batch of several processes has no schedule yet (one host sync to make it)
            schedule = ctx.schedule if alone else None
            sequential_update_(memory, all_x, all_y, ctx.momentum, schedule)
        return grad_inputs, None, None, None, None, None, None


class ClusterMemory(nn.Module):
    """Cluster-level InfoNCE against a momentum-updated centre bank (method D.2 step 8).

    Buffer ``features`` (K, D) holds unit-norm centres; ``.to(device)`` moves it like any buffer.
    Call :meth:`set_centroids` after each clustering, then use the module as a loss:
    ``loss = memory(feats, labels)``; ``loss.backward()`` also updates the memory.

    Caveat (same as the released code): if the same memory is used in several forward calls before
    one backward, the backward calls run one after the other and a later one sees the memory
    already updated by an earlier one. Concatenate the batches into one call to avoid this.

    Args:
        num_features: D.
        num_clusters: K (the buffer is resized by :meth:`set_centroids` if K changes).
        temp: τ of the softmax (0.05).
        momentum: μ, weight of the old centre (0.1).
        use_hard: use :func:`hard_update_` instead of :func:`sequential_update_`.
        gather: with several processes training together (torchrun), how the update in backward gathers
            the batches of all of them (equal sizes; utils/distributed.py ``batch_gather``), so every copy of
            the memory stays identical; None: one process.
    """

    def __init__(self, num_features: int, num_clusters: int, temp: float = 0.05,
                 momentum: float = 0.1, use_hard: bool = False, gather: Optional[Gather] = None) -> None:
        super().__init__()
        if temp <= 0:
            raise ValueError(f"temp must be > 0, got {temp}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_features = int(num_features)
        self.num_clusters = int(num_clusters)
        self.temp = float(temp)
        self.momentum = float(momentum)
        self.use_hard = bool(use_hard)
        if gather is not None and not callable(gather):
            raise TypeError(f"gather must be a callable or None, got {type(gather).__name__}")
        self.gather = gather
        self.register_buffer("features", torch.zeros(self.num_clusters, self.num_features))

    @torch.no_grad()
    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Copy L2-normalised ``centroids`` (K', D) into the buffer (resized if K' ≠ K).

        The buffer keeps its device and dtype; the caller's tensor is never aliased.
        """
        if centroids.dim() != 2 or centroids.shape[1] != self.num_features:
            raise ValueError(f"centroids must have shape (K, {self.num_features}), "
                             f"got {tuple(centroids.shape)}")
        new = F.normalize(centroids.detach().to(self.features.device, self.features.dtype), dim=1)
        if new.shape == self.features.shape:
            self.features.copy_(new)
        else:
            self.features = new.clone()  # re-registers the buffer under the same name
            self.num_clusters = new.shape[0]

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Apply the momentum update alone (no loss, no gradient, no all_gather).

        Args:
            inputs: (B, D) raw features (normalised here).
            targets: (B,) class ids in 0..K−1.
        """
        x = F.normalize(inputs.detach(), dim=1)
        rule = hard_update_ if self.use_hard else sequential_update_
        rule(self.features, x, targets.to(self.features.device), self.momentum)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss (1/B) Σ_b CE(x̂_b Mᵀ / τ, y_b); the memory update happens in backward.

        Args:
            inputs: (B, D) features (un-normalised; gradient flows through the normalisation).
            targets: (B,) int64 class ids in 0..K−1, best on the CPU as the loader gives them: the
                update's schedule is then read there, not from the GPU (moved to the memory's device).
        """
        schedule = None
        if not self.use_hard and self.gather is None and targets.device.type == "cpu":
            schedule = update_schedule(targets)
        targets = targets.to(self.features.device, non_blocking=True)
        x = F.normalize(inputs, dim=1)
        logits = _MemoryProduct.apply(x, targets, self.features, self.momentum, self.use_hard,
                                      self.gather, schedule)
        return F.cross_entropy(logits / self.temp, targets)

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return (f"num_features={self.num_features}, num_clusters={self.num_clusters}, "
                f"temp={self.temp}, momentum={self.momentum}, use_hard={self.use_hard}")
