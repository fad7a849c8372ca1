"""One writer per artifact: an exclusive, non-blocking lock on ``<artifact>/.lock``.

The lock is ``flock(2)`` on a file inside the artifact directory. The kernel drops it when its
holder exits, however it exits (``kill -9`` included), so a lock left behind by a killed process
is simply taken over by the next writer; the file's text (pid and host of the holder) only feeds
the message a refused process prints. Under torchrun only rank 0 takes the lock (the other ranks
of the job write nothing, or write through rank 0's plan), so ranks never lock each other out.
Within one process the lock is re-entrant: a stage that reuses another stage's artifact (the
``run:standard`` teacher) or a test that opens an artifact twice does not lock itself out. Forked
children (data loader workers, the shard writer) do not inherit it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from daat.errors import DaatError

LOCK_FILE = ".lock"


class ArtifactInUse(DaatError):
    """Another process holds the artifact's writer lock."""


class WriterLock:
    """A held writer lock; ``release`` (or process exit) frees it."""

    _held: dict[str, WriterLock] = {}  # real path of the artifact -> this process's lock

    def __init__(self, directory: Path, fd: int):
        self.directory, self._fd, self._depth = directory, fd, 1

    @classmethod
    def acquire(cls, directory: str | os.PathLike) -> WriterLock:
        """Take the lock of ``directory`` (which must exist) or raise ``ArtifactInUse`` at once."""
        directory = Path(directory)
        key = os.path.realpath(directory)
        held = cls._held.get(key)
        if held is not None:
            held._depth += 1
            return held
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd, wait=True)
            os.close(fd)
            raise ArtifactInUse(
                f"{directory} is in use by {holder or 'another process'}; wait "
                f"for it to finish, or stop it"
            ) from None
        except OSError as e:
            os.close(fd)
            raise DaatError(
                f"{directory}: cannot take the writer lock ({e.strerror}); put --out "
                f"on a file system that supports flock"
            ) from e
        stale = _holder(fd, wait=False)
        if stale:  # a clean release empties the file: this holder was killed
            sys.stderr.write(
                f"note: {directory}: taking over the lock of {stale}, which "
                f"ended without releasing it\n"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} (host {socket.gethostname()})\n".encode(), 0)
        lock = cls(directory, fd)
        cls._held[key] = lock
        return lock

    def release(self) -> None:
        self._depth -= 1
        if self._depth > 0 or self._fd < 0:
            return
        self._held.pop(os.path.realpath(self.directory), None)
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = -1


def holder(directory: str | os.PathLike) -> str | None:
    """Who holds the writer lock of ``directory`` ("pid N (host H)", or "this process"), or None
    when nobody does. Probes with a non-blocking flock that it releases at once."""
    directory = Path(directory)
    if os.path.realpath(directory) in WriterLock._held:
        return "this process"
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # never written by a stage that locks
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd, wait=True) or "another process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _forget_in_child() -> None:
    """A forked child (DataLoader worker, shard writer) drops its copies of the lock descriptors:
    the parent's keep the lock, and a child outliving a killed parent must not keep it alive."""
    for lock in WriterLock._held.values():
        os.close(lock._fd)
        lock._fd = -1
    WriterLock._held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _holder(fd: int, wait: bool) -> str:
    """The holder's "pid N (host H)"; a holder that has just locked may not have written it yet."""
    for _ in range(20 if wait else 1):
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text or not wait:
            return text
        time.sleep(0.01)
    return ""
