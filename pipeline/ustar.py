"""The plain ustar archives shards are stored in: members with fixed metadata (so the same
samples give the same bytes each run) written with ``tarfile``, read back by a small strict reader.

Knows nothing of what the members hold (that is ``pipeline/shards.py``); imports only
``daat/errors.py``.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator

from daat.errors import ShardFormatError


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append member ``name`` holding ``data`` (mode 644, mtime 0, no owner)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: same bytes each run
    tar.addfile(info, io.BytesIO(data))


BLOCK = 512
_REGULAR = (b"0", b"\0")


def entries(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each entry of a plain ustar archive (what ``add`` writes): a small
    reader instead of ``tarfile``, whose header parsing is ~4x the cost of the rest of a raw sample
    read. Anything it does not know (pax/GNU extension headers, links, directories, bad
    checksums, truncation) is refused."""
    where = str(path)
    with open(path, "rb") as f:
        while True:
            header = f.read(BLOCK)
            if len(header) < BLOCK:
                raise ShardFormatError(f"{where}: truncated tar (no end-of-archive block)")
            if header.count(0) == BLOCK:
                return
            name, size = parse_header(header, where)
            data = f.read(size)
            if len(data) < size:
                raise ShardFormatError(f"{where}: truncated tar inside member '{name}'")
            f.seek(-size % BLOCK, os.SEEK_CUR)
            yield name, data


def parse_header(header: bytes, where: str) -> tuple[str, int]:
    try:
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        if header[257:263] == b"ustar\0" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        stored_sum = int(header[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
        size = int(header[124:136].replace(b"\0", b" ").strip() or b"0", 8)
    except (UnicodeDecodeError, ValueError) as e:
        raise ShardFormatError(f"{where}: corrupt tar header ({e})") from e
    if stored_sum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise ShardFormatError(f"{where}: tar header checksum mismatch near member '{name}'")
    if header[156:157] not in _REGULAR:
        raise ShardFormatError(
            f"{where}: member '{name}' is not a regular file (tar type "
            f"{header[156:157]!r}); refusing the shard"
        )
    return name, size
