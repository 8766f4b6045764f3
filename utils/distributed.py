"""torch.distributed support (torchrun). Without torchrun everything here is a no-op.

Under ``torchrun --nproc_per_node N`` every process trains on one device with
DistributedDataParallel; clustering, matching and the Gaussian mixture run on rank 0 and their
results are broadcast, so all ranks train on identical pseudo-labels; only rank 0 writes files.

Batch sizes on the command line are global: the samplers give each rank a contiguous slice of
whole identities. Checkpoints are read by rank 0 and broadcast (:func:`run_on_main`), so resuming
needs no shared file system for the run directory and never races with rank 0's writes. test.py
evaluates on rank 0 alone; the other ranks exit at once.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, List

import torch
import torch.distributed as tdist
from torch import nn

from data.sample import DataError
from utils.device import maybe_data_parallel, seed_everything, unwrap

# Rank 0 clusters, matches and evaluates alone while the other ranks wait inside a collective; the
# default collective timeout (10 min for NCCL) is too short for SYSU-MM01 clustering on a CPU.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass
class DistInfo:
    """Process-group facts of this process."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, ...).

    NCCL on GPUs, gloo on CPU (``--device cpu`` or no GPU). Returns a disabled DistInfo when the
    script was not started by torchrun.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and str(device) != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return DistInfo(enabled=True, rank=rank, world_size=world, local_rank=local_rank, device=device)


def wrap_model(model: nn.Module, dist: DistInfo, device: torch.device, sync_bn: bool = False,
               data_parallel: bool = True) -> nn.Module:
    """DDP under torchrun (optionally with SyncBatchNorm), else DataParallel on several GPUs (unless
    ``data_parallel`` is False), else as is."""
    if not dist.enabled:
        return maybe_data_parallel(model, device) if data_parallel else model
    if sync_bn:
        if device.type != "cuda":
            raise DataError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm does not run on the CPU; "
                            "drop --sync-bn for CPU runs")
        # Reuses the BatchNorm parameters and buffers, so an optimizer built before stays valid.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    # No unused-parameter search: every training forward feeds both modalities; the single-modality
    # passes (feature extraction, evaluation) go through the unwrapped module, never through DDP.
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def env_rank() -> int:
    """Global rank that torchrun announces (0 without torchrun), readable before any process group."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    """Number of processes that torchrun starts (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def broadcast_object(obj: Any, dist: DistInfo) -> Any:
    """``obj`` of rank 0 on every rank (pickled); identity without a process group."""
    if not dist.enabled:
        return obj
    box: List[Any] = [obj if dist.is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_rows(x: torch.Tensor, dist: DistInfo, total: int) -> torch.Tensor:
    """Concatenate per-rank row blocks in rank order and cut to ``total`` rows (undo padding).

    Every rank must pass a tensor with the same number of rows (pad the last rank's block).
    """
    if not dist.enabled:
        return x[:total]
    parts = [torch.empty_like(x) for _ in range(dist.world_size)]
    tdist.all_gather(parts, x.contiguous())
    return torch.cat(parts)[:total]


def barrier(dist: DistInfo) -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.enabled:
        tdist.barrier()


def run_on_main(fn: Callable[[], Any], dist: DistInfo) -> Any:
    """``fn()`` computed on rank 0 only, its result returned on every rank.

    A :class:`DataError` raised by ``fn`` on rank 0 is raised on every rank, so all processes stop
    with the same one-line message instead of the others waiting for a broadcast that never comes.
    """
    if not dist.enabled:
        return fn()
    out = None
    if dist.is_main:
        try:
            out = (True, fn())
        except DataError as err:
            out = (False, str(err))
    ok, value = broadcast_object(out, dist)
    if not ok:
        raise DataError(value)
    return value


@torch.no_grad()
def sync_buffers(model: nn.Module, dist: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Each rank updates its running statistics with its own slice of the batch, and DDP re-broadcasts
    them only at the start of the next gradient-enabled forward. Eval-mode passes (feature
    extraction) and checkpoints must see one set of statistics: rank 0's, the one that is saved.
    """
    if not dist.enabled:
        return
    for buf in unwrap(model).buffers():
        tdist.broadcast(buf, src=0)


def all_ranks_true(flag: torch.Tensor, dist: DistInfo) -> bool:
    """Whether the scalar boolean ``flag`` holds on every process (one host sync; a MIN all-reduce under
    torchrun, so that every process takes the same branch)."""
    ok = flag.to(torch.float32)
    if dist.enabled:
        tdist.all_reduce(ok, op=tdist.ReduceOp.MIN)
    return bool(ok)


def sum_over_ranks_(tensors: List[torch.Tensor], dist: DistInfo) -> None:
    """Replace each tensor by its sum over the processes, in place (nothing without torchrun)."""
    if dist.enabled:
        for t in tensors:
            tdist.all_reduce(t)


def mean_over_ranks(values: Dict[str, float], dist: DistInfo) -> Dict[str, float]:
    """Average of per-rank scalars (e.g. epoch losses) so that rank 0 logs the global value."""
    if not dist.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    return {k: float(v) / dist.world_size for k, v in zip(keys, t.tolist())}


def batch_gather(dist: DistInfo):
    """The gather of a cluster memory (memory/cluster_memory.py) under torchrun: (B, D) inputs and (B,)
    targets -> every process's rows in rank order (equal B on every rank). None for one process."""
    if not dist.enabled or dist.world_size == 1:
        return None

    def gather(inputs: torch.Tensor, targets: torch.Tensor):
        total = len(inputs) * dist.world_size
        return all_gather_rows(inputs, dist, total), all_gather_rows(targets, dist, total)
    return gather


def gather_keep_grad(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """All ranks' rows in rank order; only this rank's rows keep their autograd graph.

    A loss computed on the gathered batch is the single-process loss of the global batch. Its
    gradient reaches only the local rows, and DDP averages the ranks' gradients, so the caller
    multiplies the loss by ``world_size`` before ``backward`` to obtain the global gradient.
    """
    if not dist.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.world_size)]
    tdist.all_gather(parts, x.detach().contiguous())
    parts[dist.rank] = x
    return torch.cat(parts)


def decorrelate_rng(seed: int, dist: DistInfo) -> None:
    """Give every rank > 0 its own augmentation stream (rank 0 keeps the single-process one).

    All ranks are seeded alike so that they build identical models; left that way, the i-th image
    of every rank's slice would get the same random crop, flip and erasing. Call after the model
    is built; samplers, clustering, MMLM and the GMM use their own seeds and are unaffected.
    """
    if dist.enabled and dist.rank > 0:
        seed_everything(seed * 1000 + dist.rank)


def state_digest(model: nn.Module) -> Dict[str, str]:
    """SHA-1 of all parameters and of all buffers (bitwise identity check across ranks)."""
    out = {}
    for name, tensors in (("params", unwrap(model).parameters()), ("buffers", unwrap(model).buffers())):
        h = hashlib.sha1()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        out[name] = h.hexdigest()
    return out
