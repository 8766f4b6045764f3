"""Tests of the offline pretraining stand-in: data/synthetic_pretrain.py and scripts/pretrain_backbone.py."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.synthetic_pretrain import augment, diverse_identity, render_population
from data.synthetic_render import make_identity
from model import build_model


def test_population_is_deterministic_and_visible_only():
    a, la = render_population(3, 4, seed=5, height=32, width=16, progress=False)
    b, lb = render_population(3, 4, seed=5, height=32, width=16, progress=False)
    c, _ = render_population(3, 4, seed=6, height=32, width=16, progress=False)
    assert a.shape == (12, 3, 32, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert la.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # visible images: colour everywhere (infrared images of the evaluation generator have equal channels)
    chroma = (a.float().amax(dim=1) - a.float().amin(dim=1)).mean(dim=(1, 2))
    assert (chroma > 5).all()


def test_identities_stretch_beyond_the_evaluation_generator():
    heights = [diverse_identity(np.random.default_rng(i)).height for i in range(400)]
    base = [make_identity(np.random.default_rng(i)).height for i in range(400)]
    assert min(heights) < min(base) and max(heights) > max(base)


def test_augment_shapes_range_and_determinism():
    imgs, _ = render_population(2, 8, seed=0, height=32, width=16, progress=False)
    x = augment(imgs, torch.Generator().manual_seed(1))
    y = augment(imgs, torch.Generator().manual_seed(1))
    z = augment(imgs, torch.Generator().manual_seed(2))
    assert x.shape == (16, 3, 32, 16) and x.dtype == torch.float32
    assert torch.equal(x, y) and not torch.equal(x, z)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert not torch.allclose(x, imgs.float() / 255, atol=0.05)  # it does change the images


def test_pretrain_script_writes_a_loadable_torchvision_state_dict(tmp_path, repo_root):
    out = tmp_path / "w.pth"
    cmd = [sys.executable, "scripts/pretrain_backbone.py", "--out", str(out), "--ids", "6", "--images-per-id", "6",
           "--epochs", "1", "--batch-size", "12", "--img-h", "32", "--img-w", "16", "--threads", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(out, weights_only=True)
    assert "conv1.weight" in state and "layer4.1.bn2.running_var" in state
    assert not any(k.startswith("fc.") for k in state)
    record = json.loads((tmp_path / "w.pth.json").read_text())
    assert record["args"]["ids"] == 6 and len(record["history"]) == 1 and 0 <= record["held_out_rank1"] <= 100
    model = build_model("resnet18", pretrained=str(out))
    for stem in (model.rgb_stem, model.ir_stem):  # both stems and the trunk start from the file
        assert torch.equal(stem[0].weight, state["conv1.weight"])
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


@pytest.mark.parametrize("bad, fragment", [(["--ids", "1"], "--ids"), (["--img-h", "8"], "--img-h"),
                                           (["--ids", "2", "--images-per-id", "2"], "--batch-size"),
                                           (["--out", "/proc/no/such/w.pth"], "/proc/no/such")])
def test_pretrain_script_bad_flags_give_one_line_errors(tmp_path, repo_root, bad, fragment):
    cmd = [sys.executable, "scripts/pretrain_backbone.py", "--out", str(tmp_path / "w.pth"), "--threads", "1", *bad]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and fragment in proc.stderr
