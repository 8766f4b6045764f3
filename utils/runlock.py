"""A run directory is used by one run at a time: ``<run_dir>/.lock`` holds the owner's pid and host.

:func:`acquire_lock` creates the file atomically (``O_EXCL``); a lock of a live process refuses the
second run with one line naming the folder, a lock left by a process that no longer exists (killed,
machine rebooted) is taken over with a warning. The lock goes away when the process exits normally.
"""
from __future__ import annotations

import atexit
import errno
import os
import socket
from typing import Optional, Tuple

from data.sample import DataError

LOCK_NAME = ".lock"


def _owner(path: str) -> Optional[Tuple[int, str]]:
    """(pid, host) written in a lock file, or None if it cannot be read (then it is stale)."""
    try:
        with open(path) as f:
            pid, host = f.read().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _create(path: str) -> bool:
    """Create the lock file with this process as owner; False if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()} {socket.gethostname()}\n")
    return True


def release_lock(path: str) -> None:
    """Remove the lock file if this process owns it."""
    owner = _owner(path)
    if owner is not None and owner[0] == os.getpid() and owner[1] == socket.gethostname():
        try:
            os.remove(path)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise


def acquire_lock(run_dir: str) -> Tuple[str, Optional[str]]:
    """Lock ``run_dir`` (which exists) for this process; returns (lock path, warning or None).

    Raises:
        DataError: another live process holds the lock (naming the folder, the pid and what to do).
    """
    path = os.path.join(run_dir, LOCK_NAME)
    warning = None
    for _ in range(3):  # a lock released or taken over between our look and our create: look again
        if _create(path):
            atexit.register(release_lock, path)
            return path, warning
        owner = _owner(path)
        me = (os.getpid(), socket.gethostname())
        if owner == me:  # this process locked it before (a second stage run in one process)
            return path, warning
        if owner is not None and owner[1] != me[1]:
            raise DataError(f"{run_dir} is in use by process {owner[0]} on {owner[1]} ({path}); wait for that "
                            "run, choose another --output-dir, or delete the lock file if that run is over")
        if owner is not None and _alive(owner[0]):
            raise DataError(f"{run_dir} is in use by another run (process {owner[0]}, {path}); wait for it to "
                            "end or choose another --output-dir")
        warning = (f"warning: {path} was left by process {owner[0] if owner else '?'}, which no longer runs; "
                   "taking the run directory over")
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    raise DataError(f"cannot lock {run_dir}: its lock file {path} keeps changing; is another run starting there?")
