"""Errors raised at the project's boundaries; the CLI prints them as one line and exits 2."""

from __future__ import annotations

import errno

_WORKER_TRACEBACK = "Original Traceback"  # torch's DataLoader re-raises a worker's error with it


class DaatError(Exception):
    """Base of every error whose message alone tells the user what is wrong and where."""


class DataError(DaatError):
    """A data card, image folder or input file is wrong (the message names it)."""


class ShardFormatError(DaatError):
    """A shard is malformed, unsafe (pickle member) or does not match what the stage needs."""


class TrainingError(DaatError):
    """Training cannot go on (NaN/inf loss, incompatible shards or checkpoint)."""


def from_worker(error: BaseException) -> bool:
    """Whether a DataLoader re-raised ``error`` from one of its worker processes."""
    return _WORKER_TRACEBACK in str(error)


def one_line(error: BaseException) -> str:
    """The error's message on one line. A DataLoader worker's error carries the worker's traceback
    in its message; only the worker's own message (the traceback's last line) is kept."""
    text = str(error)
    if from_worker(error):
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        head, sep, rest = last.partition(": ")
        if sep and all(part.isidentifier() for part in head.split(".")):
            last = rest  # 'daat.errors.ShardFormatError: x.tar: truncated' -> 'x.tar: truncated'
        text = f"{last} (in a data-loader worker)"
    return " ".join(text.split())


_STORAGE_FIXES = {
    errno.ENOSPC: "free space there (or point --out at another disk) and rerun the same "
    "command: finished work is reused",
    errno.EDQUOT: "free space within your quota (or point --out elsewhere) and rerun the same "
    "command: finished work is reused",
    errno.EROFS: "point --out at a writable file system",
    errno.EACCES: "fix that path's permissions or choose a writable --out",
    errno.EPERM: "fix that path's permissions or choose a writable --out",
}


def storage_problem(error: OSError, where: str | None = None) -> str | None:
    """One line naming the path, the cause and the fix for a storage error (full disk, read-only
    or forbidden path); None for any other OSError."""
    fix = _STORAGE_FIXES.get(error.errno)
    if fix is None:
        return None
    path = error.filename or where or "the output directory"
    verb = "access" if error.errno in (errno.EACCES, errno.EPERM) else "write"
    return f"cannot {verb} {path}: {error.strerror} ({errno.errorcode[error.errno]}); {fix}"
