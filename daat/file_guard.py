"""``FileGuard``: whether an artifact's files still hold the bytes its manifest records, checked
cheaply (sizes), shared across ranks (each hashes its share) and again before results are written
(only files whose stat moved). The manifest is read through ``Artifact`` only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daat.artifacts import Artifact


class FileGuard:
    """Checks that some of an artifact's files still hold the bytes its manifest records:
    ``sizes`` stats them; ``verify`` hashes this process's share (rank r of W: files r, r+W, ...)
    and remembers their stats; ``recheck`` (before results are written) re-hashes any file of
    that share whose size, mtime, ctime or inode moved. Each returns problem lines naming the
    file (empty = good)."""

    def __init__(self, art: Artifact, relpaths: list[str]):
        self.art, self.relpaths = art, sorted(set(relpaths))
        self._stats: dict[str, tuple] = {}

    def sizes(self) -> list[str]:
        problems = []
        for rel in self.relpaths:
            recorded, full = self.art.recorded_bytes(rel), self.art.path / rel
            if recorded is None:
                problems.append(f"{rel}: not recorded in the manifest")
            elif not full.is_file():
                problems.append(f"{rel}: missing")
            elif full.stat().st_size != recorded:
                problems.append(
                    f"{rel}: {full.stat().st_size} bytes, manifest says "
                    f"{recorded} (truncated or changed since it was made)"
                )
        return problems

    def verify(self, rank: int = 0, world_size: int = 1) -> list[str]:
        self._stats = {}
        return [p for rel in self.relpaths[rank::world_size] if (p := self._check(rel))]

    def recheck(self) -> list[str]:
        return [
            p
            for rel, stat in list(self._stats.items())
            if _stat(self.art.path / rel) != stat and (p := self._check(rel))
        ]

    def _check(self, rel: str) -> str | None:
        before = _stat(self.art.path / rel)  # taken first: a write during hashing shows later
        problem = self.art.check_file(rel)
        if problem is None:
            self._stats[rel] = before
        return problem


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev
