"""torch.distributed support (torchrun). Without torchrun everything here is a no-op.

Under ``torchrun --nproc_per_node N`` every process trains on one device with
DistributedDataParallel; clustering, matching and the Gaussian mixture run on rank 0 and their
results are broadcast, so all ranks train on identical pseudo-labels; only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as tdist
from torch import nn

from utils.device import maybe_data_parallel


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


def init_distributed(args) -> DistInfo:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, ...).

    NCCL on GPUs, gloo on CPU (``--device cpu`` or no GPU). Returns a disabled DistInfo when the
    script was not started by torchrun.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and str(getattr(args, "device", "auto")) != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(enabled=True, rank=rank, world_size=world, local_rank=local_rank, device=device)


def wrap_model(model: nn.Module, dist: DistInfo, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DDP under torchrun (optionally with SyncBatchNorm), else DataParallel on several GPUs, else as is."""
    if not dist.enabled:
        return maybe_data_parallel(model, device)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    # Unused-parameter detection: the two stems are not both used by every forward pass.
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


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
