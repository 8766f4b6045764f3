"""The torchrun jobs of tests/test_distributed.py (jobs of tests/e2e_jobs.py: run once per session, in the
background): short stage-1 and stage-2 runs under ``python -m torch.distributed.run --nproc_per_node 2`` on
synthetic data, a resume, the same stage 1 in one process, and the controlled one- and two-process runs.

Every run records what each rank trained on through an observer of the training events
(utils/train/callbacks.py) that a ``sitecustomize`` module on ``PYTHONPATH`` installs in every process.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

from e2e_harness import ROOT as _ROOT
from e2e_harness import STAGE1 as E2E_STAGE1
from e2e_harness import STAGE2 as E2E_STAGE2
from e2e_harness import flags, run_cmd
from e2e_scheduler import JobSpec

ROOT = str(_ROOT)
WORLD = 2

# The tiny settings of tests/e2e_harness.py, one epoch per stage-1 phase, no evaluation.
STAGE1 = flags(E2E_STAGE1, drop=["--report-ari"], epochs=1, eval_step=0)
STAGE2 = flags(E2E_STAGE2, pretrained="none", lr=0.01, eval_step=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Loaded through PYTHONPATH as sitecustomize by every run below (every rank, and the torchrun launcher,
# which never hears an event): records what each rank trained on into {folder}:
# <stage>[_<phase>][_e<epoch>]_<event>_rank<r>.npz, and the checkpoints it wrote into writes_rank<r>.txt.
_RECORDER = '''
import os
import sys
sys.path.insert(0, {root!r})
from utils.train.callbacks import OBSERVERS
def _record(event, rank, stage, phase=None, epoch=None, values=None, path=None):
    import numpy as np
    import torch
    os.makedirs({folder!r}, exist_ok=True)
    if event == "checkpoint":
        with open(os.path.join({folder!r}, "writes_rank%d.txt" % rank), "a") as f:
            f.write(os.path.abspath(path) + "\\n")
        return
    name = "_".join(x for x in (stage, phase, "e%d" % epoch if epoch else None, event) if x)
    arrays = {{k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v) for k, v in values().items()}}
    np.savez(os.path.join({folder!r}, "%s_rank%d.npz" % (name, rank)), **arrays)
OBSERVERS.add(_record)
'''


# Added to the sitecustomize of the runs below: BatchNorm always normalises with its running
# statistics and the training transforms are deterministic, i.e. the two known sources of
# difference between one and two processes are switched off. Adam is replaced by plain SGD at the
# same rate: Adam divides each gradient by its own running magnitude, so the rounding-level
# differences of near-zero gradients (another summation order in the all-reduce) become full-size
# steps, and how far that drifts depends on the CPU; SGD keeps rounding differences at rounding level.
_CONTROLLED = '''
import sys
sys.path.insert(0, {root!r})
import torch
import torch.nn.functional as F
import data.transforms as tr
class _PlainSGD(torch.optim.SGD):
    def __init__(self, params, lr, weight_decay=0.0, **unused):
        super().__init__(params, lr=lr, weight_decay=weight_decay)
torch.optim.Adam = _PlainSGD
_batch_norm = F.batch_norm
def _running_stats_bn(x, mean, var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    return _batch_norm(x, mean, var, weight, bias, False, momentum, eps)
def _fixed_transforms(h, w, pad=10):
    t = tr.build_test_transform()
    return tr.TwoViews(t, t), t
F.batch_norm = _running_stats_bn
tr.build_train_transforms = _fixed_transforms
'''


def run_ranks(script, args, debug_dir, nproc=WORLD, controlled=False):
    """Run an entry script (under torchrun when nproc > 1) with the recording observer (and with
    :data:`_CONTROLLED` when ``controlled``); returns the process."""
    hook = debug_dir.parent / f"{debug_dir.name}_hook"
    hook.mkdir(parents=True, exist_ok=True)
    code = _RECORDER.format(root=ROOT, folder=str(debug_dir))
    (hook / "sitecustomize.py").write_text(code + (_CONTROLLED.format(root=ROOT) if controlled else ""))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(hook))
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                      "--master_port", str(_free_port())]
    return run_cmd([sys.executable, *launcher, os.path.join(ROOT, script), *args], env=env, timeout=900)



def _data(jobs, out: Path) -> str:
    """Synthetic SYSU-MM01 (24 ids) for every run below."""
    from data.synthetic import generate_sysu

    data = str(out / "sysu")
    generate_sysu(data, ids=24, seed=0)
    return data


def _stage1(jobs, out: Path) -> SimpleNamespace:
    """Stage 1 under torchrun: paths of data, output, run dir, debug dir, and the process."""
    data = jobs.result("ddp_data")
    ns = SimpleNamespace(tmp=out, data=data, output=out / "ddp", run=out / "ddp" / "sysu" / "baseline", dbg=out / "dbg")
    ns.proc = run_ranks("baseline_sysu.py", ["--data-dir", data, "--output-dir", str(ns.output), *STAGE1], ns.dbg)
    return ns


def _resume(jobs, out: Path):
    """A copy of the two-process stage 1 without its final.pth, resumed under torchrun: (output, debug dir,
    process)."""
    s1 = jobs.result("ddp_stage1")
    output, dbg = out / "resumed", out / "dbg_resume"
    if s1.proc.returncode != 0:
        return output, dbg, s1.proc
    shutil.copytree(s1.output, output)
    os.remove(output / "sysu" / "baseline" / "final.pth")
    return output, dbg, run_ranks("baseline_sysu.py", ["--data-dir", s1.data, "--output-dir", str(output), *STAGE1,
                                                       "--resume"], dbg)


def _single(jobs, out: Path):
    """The same stage 1 in one process: (output, debug dir, process)."""
    output, dbg = out / "single", out / "dbg_single"
    return output, dbg, run_ranks("baseline_sysu.py", ["--data-dir", jobs.result("ddp_data"), "--output-dir",
                                                       str(output), *STAGE1], dbg, nproc=1)


def _stage2(jobs, out: Path):
    """main.py under torchrun from the two-process stage 1: (debug dir, output, process)."""
    s1 = jobs.result("ddp_stage1")
    dbg, output = out / "dbg2", out / "ddp2"
    if s1.proc.returncode != 0:
        return dbg, output, s1.proc
    return dbg, output, run_ranks("main.py", ["--dataset", "sysu", "--data-dir", s1.data, "--output-dir", str(output),
                                              "--resume-net1", str(s1.run / "final.pth"), *STAGE2], dbg)


def _controlled(nproc: int):
    """Job: stage 1 with :data:`_CONTROLLED` in ``nproc`` processes: (output, process)."""
    def job(jobs, out: Path):
        output = out / f"controlled_{nproc}"
        return output, run_ranks("baseline_sysu.py", ["--data-dir", jobs.result("ddp_data"), "--output-dir",
                                                      str(output), *STAGE1], out / f"dbg_controlled_{nproc}",
                                 nproc=nproc, controlled=True)
    return job


DDP_JOBS = {
    "ddp_data": JobSpec(_data, (), 1),
    "ddp_stage1": JobSpec(_stage1, ("ddp_data",), 1),
    "ddp_resume": JobSpec(_resume, ("ddp_stage1",)),
    "ddp_single": JobSpec(_single, ("ddp_data",)),
    "ddp_stage2": JobSpec(_stage2, ("ddp_stage1",)),
    "ddp_controlled_1": JobSpec(_controlled(1), ("ddp_data",)),
    "ddp_controlled_2": JobSpec(_controlled(WORLD), ("ddp_data",)),
}
