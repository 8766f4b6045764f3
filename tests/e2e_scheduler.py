"""A lazy, memoised scheduler for the end-to-end jobs (defined in tests/e2e_jobs.py).

A job is a function ``fn(jobs, workdir)`` with the names of the jobs whose results it reads
(``jobs.result(name)``) and a priority. :meth:`Jobs.request` schedules a job and, first, everything it
depends on; nothing else ever starts, and nothing runs twice in a session. At most ``slots`` jobs run at
a time (each runs one single-threaded subprocess after another, so 2 slots keep a 2-core machine busy);
when a slot frees, the ready job (all dependencies finished) of the lowest priority number takes it, in
request order among equals, so the longest chain of runs is never kept waiting behind short ones. A
job whose dependency failed does not run; it fails with that error, which the tests that need it report.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Tuple

from e2e_harness import kill_live


@dataclass(frozen=True)
class JobSpec:
    """How to run one job: ``fn(jobs, workdir)``, the jobs it reads, its priority (lower runs first)."""

    fn: Callable[["Jobs", Path], object]
    deps: Tuple[str, ...] = ()
    priority: int = 2


class Jobs:
    """Runs the jobs of ``specs`` on demand, each once, in its own folder under ``base``."""

    def __init__(self, specs: Mapping[str, JobSpec], base: Path, slots: int = 2):
        self._specs, self._base, self._slots = specs, base, slots
        self._lock = threading.Lock()
        self._futures: Dict[str, Future] = {}   # every job requested so far
        self._queue: List[str] = []             # requested, not started, in request order
        self._running = 0
        self._stopped = False
        self._t0 = time.monotonic()
        self.started_at: Dict[str, float] = {}  # seconds from the first request to each job's start
        self.done_at: Dict[str, float] = {}     # seconds from the first request to each job's end

    def request(self, *names: str) -> None:
        """Schedule ``names`` and their dependencies (no-op for jobs already requested)."""
        with self._lock:
            for name in names:
                self._add(name)
            self._dispatch()

    def get(self, name: str):
        """The job's result, scheduling it if needed; re-raises the job's exception in the caller.

        Ctrl-C while waiting stops the scheduler and kills the running subprocesses.
        """
        self.request(name)
        fut = self._futures[name]
        try:
            # Wake up regularly: Ctrl-C may be delivered to a job's thread, and only the main thread's
            # next bytecode runs the handler, which an untimed wait would postpone until the job ends.
            while True:
                try:
                    return fut.result(timeout=0.2)
                except FutureTimeout:
                    continue
        except (KeyboardInterrupt, SystemExit):
            self.stop()
            raise

    def result(self, name: str):
        """For job functions: the result of a dependency (finished, since it was declared)."""
        fut = self._futures[name]
        if not fut.done():
            raise RuntimeError(f"job {name!r} read before it finished: declare it in the reader's deps")
        return fut.result()

    def workdir(self, name: str) -> Path:
        """The folder of job ``name`` (created on first use)."""
        path = self._base / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stop(self) -> None:
        """Start nothing more, fail the jobs not started, kill the running subprocesses."""
        with self._lock:
            self._stopped = True
            for name in self._queue:
                self._futures[name].set_exception(RuntimeError(f"job {name!r} not run: the test session stopped"))
            self._queue.clear()
        kill_live()

    def summary(self) -> str:
        """One line: wall time so far and each finished job's start and end time, in order of their end."""
        ends = sorted(self.done_at.items(), key=lambda kv: kv[1])
        return (f"e2e jobs: {time.monotonic() - self._t0:.0f}s wall since the first request; per job (start-end, s "
                "from then): " + ", ".join(f"{k} {self.started_at.get(k, 0):.0f}-{v:.0f}" for k, v in ends))

    def _add(self, name: str) -> None:
        if name in self._futures:
            return
        for dep in self._specs[name].deps:
            self._add(dep)
        self._futures[name] = Future()
        self._queue.append(name)

    def _dispatch(self) -> None:
        """Start ready jobs while slots are free (caller holds the lock)."""
        while not self._stopped and self._running < self._slots:
            ready = [n for n in self._queue if all(self._futures[d].done() for d in self._specs[n].deps)]
            if not ready:
                return
            name = min(ready, key=lambda n: self._specs[n].priority)  # first in request order among equals
            self._queue.remove(name)
            self._running += 1
            threading.Thread(target=self._run, args=(name,), name=f"e2e-{name}", daemon=True).start()

    def _run(self, name: str) -> None:
        fut, spec = self._futures[name], self._specs[name]
        self.started_at[name] = time.monotonic() - self._t0
        try:
            failed = [d for d in spec.deps if self._futures[d].exception() is not None]
            if failed:
                raise RuntimeError(f"job {name!r} not run: job {failed[0]!r} failed "
                                   f"({self._futures[failed[0]].exception()!r}; see the tests that need it)")
            fut.set_result(spec.fn(self, self.workdir(name)))
        except BaseException as err:  # handed to the tests that need the job
            fut.set_exception(err)
        finally:
            with self._lock:
                self.done_at[name] = time.monotonic() - self._t0
                self._running -= 1
                self._dispatch()
