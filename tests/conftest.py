"""Shared pytest configuration: CPU only; the end-to-end jobs start with the session and run beside the
other tests (one torch thread per test meanwhile); the fast lane's guard.

The fast lane (``-m "not slow"``) starts no process. :func:`_process_guard` enforces it: while a test
that is not marked ``slow`` sets up, runs or tears down, starting a process (``subprocess``,
``multiprocessing`` and so DataLoader workers and ``mp.spawn``, ``os.system``, ``os.fork``,
``os.posix_spawn``) fails the test. The end-to-end jobs (tests/e2e_jobs.py) run in their own threads
("e2e-*") alongside the other tests and are not checked.
"""
import contextlib
import multiprocessing.process
import os
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The end-to-end jobs of tests/e2e_jobs.py: one session fixture, so that every test module shares the
# jobs and none runs twice.
from e2e_jobs import SESSION_JOBS, e2e  # noqa: E402,F401


# ----------------------------------------------------------------------------------------------
# the fast lane starts no process


class ProcessStarted(AssertionError):
    """A test not marked slow started a process."""


_GUARD = {"test": None}   # node id of the test being guarded, None when nothing is guarded


def _refuse(what: str) -> None:
    test = _GUARD["test"]
    if test is not None and not threading.current_thread().name.startswith("e2e-"):
        raise ProcessStarted(f"{test} starts a process ({what}) but is not marked slow: mark it "
                             "@pytest.mark.slow or run the code in-process (workers 0)")


def _guarded(name: str, original):
    def wrapper(*args, **kwargs):
        _refuse(name if name != "subprocess.Popen" else f"{name} {args[1] if len(args) > 1 else kwargs.get('args')!r}")
        return original(*args, **kwargs)
    wrapper.__wrapped__ = original
    return wrapper


def _install_guard() -> None:
    """Wrap every way of starting a process once; the wrappers check :data:`_GUARD` on each call."""
    subprocess.Popen.__init__ = _guarded("subprocess.Popen", subprocess.Popen.__init__)
    multiprocessing.process.BaseProcess.start = _guarded("multiprocessing start",
                                                         multiprocessing.process.BaseProcess.start)
    for name in ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            setattr(os, name, _guarded(f"os.{name}", getattr(os, name)))


@contextlib.contextmanager
def _guard(item):
    if item.get_closest_marker("slow") is not None:
        yield
        return
    _GUARD["test"] = item.nodeid
    try:
        yield
    finally:
        _GUARD["test"] = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _guard(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _guard(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    with _guard(item):
        yield


def pytest_configure(config):
    """Install the process guard; register the marker with which an end-to-end test names its jobs."""
    import torch.cuda  # noqa: F401  (its first import asks ldconfig for the CUDA libraries: a process)
    from joblib.externals.loky import cpu_count

    cpu_count(only_physical_cores=True)  # asked once (cached), by reading /proc/cpuinfo with a process

    _install_guard()
    config.addinivalue_line("markers", "e2e_jobs(*names): jobs of tests/e2e_jobs.py that the test reads "
                                       "through the e2e fixture (scheduled when the session starts)")


def pytest_terminal_summary(terminalreporter):
    """The end-to-end jobs' start and end times, when any ran."""
    for jobs in SESSION_JOBS:
        terminalreporter.write_line(jobs.summary())


def pytest_collection_modifyitems(session, config, items):
    """The tests that read end-to-end jobs go last, so the jobs (started with the session, see
    :func:`_start_e2e_jobs`) run in the background while the in-process tests run."""
    items.sort(key=lambda item: item.get_closest_marker("e2e_jobs") is not None)


_THREADS = {"torch": None}  # torch threads per test; None: torch's default (one per core)


@pytest.fixture(scope="session", autouse=True)
def _start_e2e_jobs(request):
    """Start the jobs the selected tests read as soon as the session starts (none in the fast lane); while
    they run, each test gets one torch thread (:func:`_threads`)."""
    if any(item.get_closest_marker("e2e_jobs") is not None for item in request.session.items):
        _THREADS["torch"] = 1
        request.getfixturevalue("e2e")


# ----------------------------------------------------------------------------------------------
# shared fixtures


@pytest.fixture(autouse=True)
def _threads():
    """One torch thread per test while the end-to-end jobs run beside the tests (two single-threaded jobs
    and the tests share a 2-core machine: more threads only add contention); torch's default, one per core,
    when no job runs (the fast lane: the machine's cores halve its longest tests). The previous setting is
    restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if _THREADS["torch"] is not None:
        torch.set_num_threads(_THREADS["torch"])
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo_root():
    """Absolute path of the repository root."""
    return ROOT


@pytest.fixture(scope="module")
def tiny_sysu(tmp_path_factory):
    """Tiny synthetic SYSU-MM01 layout (8 ids), made by scripts/make_synthetic.py (in-process) once per
    test module."""
    from scripts.make_synthetic import main
    from utils.cli import run_cli

    out = tmp_path_factory.mktemp("synth") / "sysu"
    assert run_cli(main, ["--layout", "sysu", "--out", str(out), "--ids", "8", "--seed", "5",
                          "--images-per-cam", "2", "3"]) == 0
    return out
