"""The one model builder of both stages (and of the learning benchmark's starting network)."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from model import build_model, describe_weights, to_channels_last
from utils.checkpoint import load_model_state
from utils.distributed import wrap_model
from utils.settings import ModelSettings


def build_network(settings: ModelSettings, device: torch.device, num_classes: int = 0,
                  pretrained: Optional[str] = None, start: Optional[Tuple[Dict, str]] = None,
                  log: Optional[Callable[[str], None]] = None) -> nn.Module:
    """The two-stream network of ``settings.arch`` with a ``num_classes``-way classifier, on ``device``.

    Backbone weights: ``pretrained`` (default ``settings.pretrained``: ImageNet, a file or none); with
    ``start`` = (stage-1 checkpoint, its path) those weights, all but the classifier, replace them
    (stage 2's ``--init baseline``). ``log`` hears where the backbone weights came from.
    """
    model = build_model(arch=settings.arch, num_classes=num_classes,
                        pretrained=settings.pretrained if pretrained is None else pretrained)
    if start is not None:
        load_model_state(model, start[0], start[1], skip_classifier=True)
    if log is not None:
        log(f"backbone weights: {describe_weights(model)}" + (" (through the stage-1 checkpoint)" if start else ""))
    return model.to(device)


def place_network(model: nn.Module, settings: ModelSettings, ctx, data_parallel: bool = True) -> nn.Module:
    """``model`` in channels_last (``--channels-last``) and wrapped for the devices: DDP under torchrun
    (SyncBatchNorm with ``--sync-bn``), DataParallel over several GPUs when ``data_parallel``, else as is."""
    if settings.channels_last:
        to_channels_last(model)
    return wrap_model(model, ctx.dist, ctx.device, sync_bn=settings.sync_bn, data_parallel=data_parallel)
