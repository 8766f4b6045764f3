"""Checkpoints: one schema for every stage, written atomically, validated on load.

Schema (a dict saved with ``torch.save``)::

    format="mmm-vireid", version, stage ("baseline" | "mmm"), phase, model (unwrapped state_dict),
    arch, num_classes, non_local, dataset, trial, epoch, optimizer, scheduler, metrics,
    best_metric, args, extra
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Any, Dict, Optional

import torch
from torch import nn

from data.sample import DataError
from utils.device import unwrap
from utils.distributed import DistInfo, debug_note_write

FORMAT = "mmm-vireid"
VERSION = 1


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (atomic on POSIX),
    so an interrupted run never leaves a truncated checkpoint behind."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(ckpt: Dict[str, Any], path: str, dist: DistInfo) -> None:
    """:func:`atomic_torch_save` of a training checkpoint (callers write on rank 0 only); the write is
    noted for the distributed test when its debug folder is set."""
    atomic_torch_save(ckpt, path)
    debug_note_write(path, dist)


def make_checkpoint(model: nn.Module, *, stage: str, phase: str, dataset: str, trial: Optional[int],
                    epoch: int, args: Dict, optimizer=None, scheduler=None, metrics=None,
                    best_metric=None, extra=None) -> Dict[str, Any]:
    """Assemble a checkpoint dict in the project schema (model weights taken from the unwrapped model)."""
    net = unwrap(model)
    return dict(format=FORMAT, version=VERSION, stage=stage, phase=phase,
                model={k: v.detach().cpu() for k, v in net.state_dict().items()},
                arch=net.arch, num_classes=int(net.num_classes), non_local=bool(getattr(net, "nl_positions", {})),
                dataset=dataset, trial=trial, epoch=int(epoch),
                optimizer=optimizer.state_dict() if optimizer is not None else None,
                scheduler=scheduler.state_dict() if scheduler is not None else None,
                metrics=metrics or {}, best_metric=best_metric, args=dict(args), extra=extra or {})


def load_checkpoint(path: str, flag: str = "checkpoint") -> Dict[str, Any]:
    """Load and validate a project checkpoint on the CPU.

    Raises:
        DataError: the file is missing, is not loadable, or is not a checkpoint of this project.
    """
    if not path or not os.path.isfile(path):
        raise DataError(f"{flag}: no file at {path!r}; give the path of a .pth written by "
                        "baseline_*.py or main.py (e.g. logs/sysu/baseline/final.pth)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, pickle.UnpicklingError,
            zipfile.BadZipFile) as err:
        raise DataError(f"{flag}: {path} is not a readable checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise DataError(f"{flag}: {path} is not a checkpoint of this project (no '{FORMAT}' "
                        "format tag); evaluate checkpoints written by baseline_*.py or main.py")
    return ckpt


def check_compatible(ckpt: Dict[str, Any], path: str, *, arch: Optional[str] = None,
                     dataset: Optional[str] = None, trial: Optional[int] = None) -> None:
    """Refuse a checkpoint built for another architecture, dataset or RegDB trial."""
    if arch is not None and ckpt.get("arch") != arch:
        raise DataError(f"{path} was trained with --arch {ckpt.get('arch')}, not --arch {arch}; "
                        f"pass --arch {ckpt.get('arch')}")
    if dataset is not None and ckpt.get("dataset") != dataset:
        raise DataError(f"{path} was trained on {ckpt.get('dataset')}, not on --dataset {dataset}")
    if trial is not None and ckpt.get("trial") not in (None, trial):
        raise DataError(f"{path} was trained on RegDB trial {ckpt.get('trial')}, not --trial {trial}")


def load_model_state(model: nn.Module, ckpt: Dict[str, Any], path: str, skip_classifier: bool = False) -> None:
    """Load checkpoint weights into ``model`` strictly (optionally without the classifier).

    Raises:
        DataError: the weights do not fit the model (another architecture or model variant).
    """
    state = ckpt["model"]
    net = unwrap(model)
    if skip_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        own = {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise DataError(f"{path} does not fit this model (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); was it trained with other --arch/--non-local settings?")
        net.load_state_dict(state, strict=False)
        return
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(f"{path} does not fit this model: {str(err).splitlines()[0][:200]}") from None
