"""scripts/run_digest.py: the digest that shows two runs bit-identical changes with any weight, optimizer
state, metric, label or result, and not with the wall-clock seconds."""
import json

import numpy as np
import torch

from e2e_harness import entry_main, run_main
from model import build_model
from utils.checkpoint import add_training_state, atomic_torch_save, make_checkpoint


def _run_folder(root, weight_shift=0.0, seconds=1.0, label=0, momentum_shift=0.0):
    """A run folder as the stages write it: a checkpoint, metrics lines, a label file, a test.py result."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, pretrained="none")
    with torch.no_grad():
        model.classifier.weight.add_(weight_shift)
    run = root / "sysu" / "mmm"
    run.mkdir(parents=True)
    ckpt = make_checkpoint(model, stage="mmm", phase="train", dataset="sysu", trial=None, epoch=1, args={},
                           metrics={"epoch": 1, "seconds": seconds})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = next(model.parameters())
    optimizer.state[first]["momentum_buffer"] = torch.full_like(first, 0.5 + momentum_shift)
    add_training_state(ckpt, optimizer, extra={"prototypes": {"ir": torch.ones(3, 2)}})
    atomic_torch_save(ckpt, str(run / "last.pth"))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss_id": 0.5, "seconds": seconds}) + "\n")
    np.savez(run / "mmlm_labels.npz", labels_ir=np.array([label, 1, -1]), paths_ir=np.array(["a.jpg", "b.jpg", "c.jpg"]))
    (root / "test_sysu_all.json").write_text(json.dumps({"results": {"all-search": {"mean": {"r1": 50.0}}},
                                                           "checkpoint": str(root)}))
    return root


def _digest(folder, capsys):
    proc = run_main(entry_main("scripts/run_digest.py"), [str(folder)], capsys)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_digest_sees_weights_metrics_labels_and_results_but_not_seconds(tmp_path, capsys):
    base = _digest(_run_folder(tmp_path / "a"), capsys)
    assert [line.split()[0] for line in base] == ["test_sysu_all.json", "sysu/mmm/last.pth", "sysu/mmm/metrics.jsonl",
                                                  "sysu/mmm/mmlm_labels.npz"]
    assert _digest(_run_folder(tmp_path / "b", seconds=7.0), capsys) == base  # only the wall clock differs
    # a change below what a tensor's repr shows (4 decimals) still changes the digest
    for changed in ({"weight_shift": 1e-6}, {"label": 2}, {"momentum_shift": 1e-6}):
        other = _digest(_run_folder(tmp_path / f"c{len(changed)}{list(changed)[0]}", **changed), capsys)
        assert other != base and len(other) == len(base)


def test_digest_refuses_a_missing_folder(tmp_path, capsys):
    proc = run_main(entry_main("scripts/run_digest.py"), [str(tmp_path / "none")], capsys)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'none'} is not a folder"
