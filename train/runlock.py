"""A directory that one blockmix process writes at a time: a run directory or a sweep directory.

The lock is ``fcntl.flock`` on ``DIR/.lock``, so the kernel drops it when its holder exits,
however it exits: a crashed run never leaves it stuck. The file names the holder (pid, host,
start time) for the error a second writer gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

import torch.distributed as dist

from train.errors import BlockmixError

LOCK_FILE = ".lock"


class DirectoryLock:
    """A held lock (or, on ranks other than 0, a stand-in holding nothing); `release` ends it."""

    def __init__(self, handle: IO[str] | None = None) -> None:
        self._handle = handle

    def release(self) -> None:
        """Give the directory up (closing the file drops the lock)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def acquire(directory: str | Path, what: str) -> DirectoryLock:
    """Lock ``directory`` (created if needed) for this process, or raise a `BlockmixError`
    naming the process that holds it; ``what`` names the directory in messages."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK_FILE, "a+")  # noqa: SIM115 - held beyond this function
    except OSError as error:
        raise BlockmixError(f"{what} {directory}: cannot create it ({error.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise BlockmixError(
            f"{what} {directory} is in use by {holder}; wait for it to end, or use another {what}"
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} (since {started})\n")
    handle.flush()
    return DirectoryLock(handle)


def hold_run(directory: str | Path, is_main: bool) -> DirectoryLock:
    """Rank 0 locks the run directory for the life of the run; every rank raises the same
    `BlockmixError` when it is taken (collective when the process group is up)."""
    lock, problem = DirectoryLock(), ""
    if is_main:
        try:
            lock = acquire(directory, "run.dir")
        except BlockmixError as error:
            problem = str(error)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        found = [problem]
        dist.broadcast_object_list(found, src=0)
        problem = found[0]
    if problem:
        raise BlockmixError(problem)
    return lock
