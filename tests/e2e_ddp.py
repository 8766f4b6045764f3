"""The torchrun jobs of tests/test_distributed.py (jobs of tests/e2e_jobs.py: run once per session, in the
background): short stage-1 and stage-2 runs under ``python -m torch.distributed.run --nproc_per_node 2`` on
synthetic data, a resume, the same stage 1 in one process, and the controlled one- and two-process runs.

Every run goes through tests/observed_run.py, which passes each process an observer of the training
events (utils/train/callbacks.py) that records what its rank trained on.
"""
from __future__ import annotations

import json
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


def run_ranks(script, args, debug_dir, nproc=WORLD, controlled=False):
    """Run an entry script through tests/observed_run.py (under torchrun when nproc > 1) with the observer
    that records every rank's events into ``debug_dir`` (and, when ``controlled``, the one- vs two-process
    comparison's changes: observed_run.control_the_run); returns the process."""
    spec = debug_dir.parent / f"{debug_dir.name}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"record": str(debug_dir), "controlled": controlled}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                      "--master_port", str(_free_port())]
    return run_cmd([sys.executable, *launcher, os.path.join(ROOT, "tests", "observed_run.py"), str(spec), script,
                    *args], env=env, timeout=900)


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
    """Job: stage 1 controlled (tests/observed_run.py control_the_run) in ``nproc`` processes: (output, process)."""
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
