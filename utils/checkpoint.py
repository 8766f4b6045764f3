"""Checkpoints: one schema for every stage, written atomically, validated on load.

Schema (a dict saved with ``torch.save``)::

    format="mmm-vireid", version, stage ("baseline" | "mmm"), phase, model (unwrapped state_dict),
    arch, num_classes, non_local, dataset, trial, epoch, optimizer, scheduler, metrics,
    best_metric, args, extra

``epoch`` is the number of epochs of the phase that are complete (1-based, as the log prints it:
a checkpoint written after the first epoch says 1). Version 1 stored the 0-based index instead;
:func:`load_checkpoint` converts it, so old runs resume at the right epoch.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import uuid
import zipfile
from typing import Any, Dict, Optional

import torch
from torch import nn

from data.sample import DataError
from utils.device import unwrap

FORMAT = "mmm-vireid"
VERSION = 2


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (atomic on POSIX),
    so an interrupted run never leaves a truncated checkpoint behind.

    The temporary file is created by ``torch.save`` itself under a name unique to this process, so it
    gets the permissions of any other output (0666 minus the umask; ``mkstemp`` would leave 0600). A
    failed write (disk full, quota, read-only folder) removes it, keeps the previous checkpoint and
    raises a one-line :class:`DataError`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot write {path}: {err.strerror}; choose a writable --output-dir") from None
    tmp = os.path.join(folder, f".tmp_{os.getpid()}_{uuid.uuid4().hex[:12]}.pth")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a short write as a RuntimeError
        raise DataError(_write_failure(path, folder, err)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_failure(path: str, folder: str, err: BaseException) -> str:
    """One line saying why a checkpoint could not be written and what to do."""
    # torch.save's short-write RuntimeError ("enforce fail at inline_container.cc ...") names no cause
    reason = err.strerror if isinstance(err, OSError) and err.strerror else "the file was written only in part"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)) or \
        (free is not None and free < 2**30)
    hint = (f"the disk looks full ({free / 2**20:.0f} MiB free in {folder}); free space or choose another "
            "--output-dir" if full and free is not None else "check the folder and the free space")
    return (f"cannot write checkpoint {path} ({reason}): {hint}, then rerun with --resume "
            "(the previous checkpoint is kept)")


def save_checkpoint(ckpt: Dict[str, Any], path: str) -> None:
    """:func:`atomic_torch_save` of a training checkpoint (callers write on rank 0 only)."""
    atomic_torch_save(ckpt, path)


def make_checkpoint(model: nn.Module, *, stage: str, phase: str, dataset: str, trial: Optional[int],
                    epoch: int, args: Dict, metrics: Optional[Dict] = None) -> Dict[str, Any]:
    """Assemble a checkpoint dict in the project schema (model weights taken from the unwrapped model);
    a training checkpoint adds its optimizer state with :func:`add_training_state`."""
    net = unwrap(model)
    return dict(format=FORMAT, version=VERSION, stage=stage, phase=phase,
                model={k: v.detach().cpu() for k, v in net.state_dict().items()},
                arch=net.arch, num_classes=int(net.num_classes), non_local=bool(getattr(net, "nl_positions", {})),
                pretrained=dict(getattr(net, "pretrained_info", {})),
                dataset=dataset, trial=trial, epoch=int(epoch), optimizer=None, scheduler=None,
                metrics=metrics or {}, best_metric=None, args=dict(args), extra={})


def add_training_state(ckpt: Dict[str, Any], optimizer, scheduler=None, best_metric: Optional[float] = None,
                       extra: Optional[Dict] = None) -> Dict[str, Any]:
    """``ckpt`` with what ``--resume`` needs: the optimizer (and scheduler) state, the best selection
    metric so far and the stage's ``extra`` (stage 2: its prototypes). Returns ``ckpt``."""
    ckpt.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict() if scheduler is not None else None,
                best_metric=best_metric, extra=extra or {})
    return ckpt


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
                        "format tag); give a .pth written by baseline_*.py or main.py")
    if ckpt.get("version", 1) < 2:  # version 1 stored the 0-based epoch index
        ckpt["epoch"] = int(ckpt["epoch"]) + 1
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
    # The weights a run started from travel with its checkpoints (stage 1 -> stage 2 -> test.py results).
    net.pretrained_info = dict(ckpt.get("pretrained") or {})
    if ckpt.get("arch") != getattr(net, "arch", ckpt.get("arch")):
        raise DataError(f"{path} holds a {ckpt.get('arch')} model but this run builds {net.arch}: pass --arch "
                        f"{ckpt.get('arch')} to use it (or another --output-dir to start a new run)")
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
