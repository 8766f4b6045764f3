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
