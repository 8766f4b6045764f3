"""Run a training entry point with observers passed in (utils/train/callbacks.py): how the tests watch
a run in its own process, or in every torchrun process, without code of their own in the training.

    python tests/observed_run.py SPEC.json ENTRY [flags ...]

ENTRY is baseline_sysu.py, baseline_regdb.py, baseline_llcm.py or main.py; the flags are the entry's.
SPEC (a JSON object) says which observers to pass:

``record``     a folder: every rank writes what it trained on there, ``<stage>[_<phase>][_e<epoch>]_<event>
               _rank<r>.npz``, and the checkpoints it wrote into ``writes_rank<r>.txt``
``interrupt``  ``{"event", "stage", "epoch", "marker"}``: at that event the process sends itself a real
               SIGINT, as Ctrl-C does, after creating the file ``marker``
``controlled`` true: the one- vs two-process comparison's run (:func:`control_the_run`)

The process exits as the entry script does (utils/cli.py ``run_cli``).
"""
import json
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recorder(folder: str):
    """The observer that records every event's values per rank into ``folder``."""
    def record(event, rank, stage, phase=None, epoch=None, values=None, path=None):
        import numpy as np
        import torch

        os.makedirs(folder, exist_ok=True)
        if event == "checkpoint":
            with open(os.path.join(folder, f"writes_rank{rank}.txt"), "a") as f:
                f.write(os.path.abspath(path) + "\n")
            return
        name = "_".join(x for x in (stage, phase, f"e{epoch}" if epoch else None, event) if x)
        arrays = {k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v) for k, v in values().items()}
        np.savez(os.path.join(folder, f"{name}_rank{rank}.npz"), **arrays)
    return record


def interrupter(event: str, stage: str, epoch: int, marker: str):
    """The observer that sends this process SIGINT at ``event`` of ``stage``'s 1-based ``epoch``."""
    def interrupt(name, **info):
        if (name, info.get("stage"), info.get("epoch")) == (event, stage, epoch):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGINT)
    return interrupt


def control_the_run() -> None:
    """Switch off the two known sources of difference between one and two processes, for this process only
    and before the stages are imported: BatchNorm always normalises with its running statistics and the
    training transforms are deterministic. Adam becomes plain SGD at the same rate: Adam divides each
    gradient by its own running magnitude, so rounding-level differences of near-zero gradients (another
    summation order in the all-reduce) become full-size steps, and how far that drifts depends on the CPU."""
    import torch
    import torch.nn.functional as F

    import data.transforms as tr

    class PlainSGD(torch.optim.SGD):
        def __init__(self, params, lr, weight_decay=0.0, **unused):
            super().__init__(params, lr=lr, weight_decay=weight_decay)

    batch_norm = F.batch_norm

    def running_stats_bn(x, mean, var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
        return batch_norm(x, mean, var, weight, bias, False, momentum, eps)

    def fixed_transforms(h, w, pad=10):
        t = tr.build_test_transform()
        return tr.TwoViews(t, t), t

    assert "utils.train.stage1" not in sys.modules, "control_the_run must run before the stages are imported"
    torch.optim.Adam = PlainSGD
    F.batch_norm = running_stats_bn
    tr.build_train_transforms = fixed_transforms


def main(argv) -> int:
    """Run ``argv[1]`` (an entry script's name) with ``argv[2:]`` and the observers of the SPEC ``argv[0]``."""
    sys.path.insert(0, ROOT)
    from utils.cli import stage1_main, run_cli, stage2_main
    from utils.train.callbacks import Observers

    with open(argv[0]) as f:
        spec = json.load(f)
    if spec.get("controlled"):
        control_the_run()
    observers = Observers()
    if "record" in spec:
        observers.add(recorder(spec["record"]))
    if "interrupt" in spec:
        observers.add(interrupter(**spec["interrupt"]))
    entry = os.path.basename(argv[1])
    if entry.startswith("baseline_"):
        return run_cli(lambda a: stage1_main(entry[len("baseline_"):-3], a, observers), argv[2:])
    return run_cli(lambda a: stage2_main(a, observers), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
