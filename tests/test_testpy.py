"""test.py's evaluation settings (issue 12): the input size comes from the checkpoint, another size is
evaluated with a warning. In-process, on tiny generated data."""
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def synth(tiny_sysu):
    """Tiny synthetic SYSU-MM01 layout (8 ids, conftest.py)."""
    return tiny_sysu


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A stage-1 checkpoint of an untrained resnet18 'trained' at 32x16."""
    from model import build_model
    from utils.checkpoint import atomic_torch_save, make_checkpoint

    model = build_model(arch="resnet18", num_classes=5, pretrained="none")
    path = str(tmp_path_factory.mktemp("ckpt") / "final.pth")
    atomic_torch_save(make_checkpoint(model, stage="baseline", phase="final", dataset="sysu", trial=None,
                                      epoch=0, args={"img_h": 32, "img_w": 16, "arch": "resnet18"}), path)
    return path


def _testpy(synth, ckpt, out, extra, capsys):
    sys.path.insert(0, ROOT)
    import test as testpy

    testpy.main(["--dataset", "sysu", "--data-dir", str(synth), "--resume-net1", ckpt, "--device", "cpu",
                 "--workers", "0", "--gallery-trials", "2", "--out", str(out), *extra])
    return json.loads(out.read_text()), capsys.readouterr().err


def test_testpy_takes_size_from_checkpoint(synth, tiny_ckpt, tmp_path, capsys):
    record, err = _testpy(synth, tiny_ckpt, tmp_path / "r.json", [], capsys)
    assert (record["arch"], record["img_h"], record["img_w"]) == ("resnet18", 32, 16)
    assert (record["flip"], record["shot"], record["gallery_trials"]) == (False, 1, 2)
    assert "warning" not in err


def test_testpy_warns_on_other_size(synth, tiny_ckpt, tmp_path, capsys):
    record, err = _testpy(synth, tiny_ckpt, tmp_path / "r.json", ["--img-h", "64", "--img-w", "32", "--flip"],
                          capsys)
    assert (record["img_h"], record["img_w"], record["flip"]) == (64, 32, True)
    assert re.search(r"warning: .* evaluated at 64x32 but trained at 32x16", err)
