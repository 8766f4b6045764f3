"""Shared pytest configuration: CPU only, one intra-op thread (the suite runs test files in one
process on a 2-core machine; more threads only add contention)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _one_thread():
    """Run every test with one torch thread and restore the previous setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo_root():
    """Absolute path of the repository root."""
    return ROOT


@pytest.fixture(scope="module")
def tiny_sysu(tmp_path_factory):
    """Tiny synthetic SYSU-MM01 layout (8 ids), made by scripts/make_synthetic.py once per test module."""
    import subprocess

    out = tmp_path_factory.mktemp("synth") / "sysu"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_synthetic.py"), "--layout", "sysu",
                    "--out", str(out), "--ids", "8", "--seed", "5", "--images-per-cam", "2", "3"],
                   check=True, capture_output=True, cwd=ROOT)
    return out
