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


# The end-to-end jobs of tests/test_e2e_*.py: one session fixture, so that every test module shares the
# jobs and none runs twice (tests/e2e_jobs.py).
from e2e_jobs import e2e  # noqa: E402,F401


def pytest_configure(config):
    """Register the marker with which an end-to-end test names the jobs it reads."""
    config.addinivalue_line("markers", "e2e_jobs(*names): jobs of tests/e2e_jobs.py that the test reads "
                                       "through the e2e fixture (scheduled together when the fixture starts)")
