"""The ImageFolder scan: which files of a split folder on disk a card reads, and every entry it
leaves out with the reason (hidden, outside-root, not-a-class, not-an-image-name, symlink-loop).
Symlinks are followed while they stay inside ``--root``; a folder reached twice is read once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daat.errors import DataError


@dataclass(frozen=True)
class Listing:
    files: list[tuple[int, str]]  # (label, relpath under --root), by class then path
    skipped: list[dict]  # {"relpath", "reason"} of every entry not read
    warnings: list[str]  # empty class folders


def scan_split(
    card_name: str, root: Path, split: str, subdir: str, classes: list[str], extensions: list[str]
) -> Listing:
    """The split's image files by class (label = position in ``classes``) and every entry left
    out, as the disk is now; ``subdir`` is the split's folder under ``root``."""
    split_dir = root / subdir
    if not split_dir.is_dir():
        raise DataError(
            f"data card '{card_name}': split directory {split_dir} (split '{split}') does not exist"
        )
    class_set = set(classes)
    skipped = [
        {"relpath": _rel(Path(e.path), root), "reason": _not_a_class(e)}
        for e in _entries(split_dir)
        if e.name not in class_set
    ]
    exts = set(extensions)
    files: list[tuple[int, str]] = []
    warnings_: list[str] = []
    for label, cls in enumerate(classes):
        class_dir = split_dir / cls
        if not class_dir.is_dir():
            raise DataError(
                f"data card '{card_name}': class folder {class_dir} (class "
                f"'{cls}', split '{split}') is missing"
            )
        outside = _outside_root(class_dir, root)
        if outside:
            skipped.append({"relpath": _rel(class_dir, root), "reason": outside})
            found: list[str] = []
        else:
            found, left_out = _walk(class_dir, root, exts)
            skipped += left_out
        if not found:
            warnings_.append(
                f"data card '{card_name}': class folder {class_dir} has no "
                f"images ({', '.join(extensions)})"
                + (" (a symlink outside --root, skipped)" if outside else "")
            )
        files.extend((label, rel) for rel in found)
    return Listing(files, sorted(skipped, key=lambda x: x["relpath"]), warnings_)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _entries(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list {directory}: {e.strerror}") from e


def _outside_root(path: Path, root: Path) -> str | None:
    """The skip reason for a symlink that leads outside --root, else None."""
    if not path.is_symlink():
        return None
    target = Path(os.path.realpath(path))
    if target == root or root in target.parents:
        return None
    return (
        f"outside-root: a symlink to {target}, outside --root {root}; move or bind-mount the "
        f"data under --root, or make --root a folder that holds both"
    )


def _not_a_class(entry: os.DirEntry) -> str:
    if entry.name.startswith("."):
        return "hidden: the name starts with '.'"
    if entry.is_dir():
        return "not-a-class: the folder is not one of the card's classes"
    return "not-a-class: a file directly in the split folder (images go in class folders)"


def _walk(directory: Path, root: Path, exts: set[str]) -> tuple[list[str], list[dict]]:
    """(relpaths of the image files under ``directory``, skipped entries with reasons). Symlinks
    are followed when they stay inside ``root``; a folder reached twice is read once."""
    found, skipped = [], []
    seen = {os.path.realpath(directory)}
    stack = [directory]
    while stack:
        for entry in _entries(stack.pop()):
            path = Path(entry.path)
            reason = (
                "hidden: the name starts with '.'"
                if entry.name.startswith(".")
                else _outside_root(path, root)
            )
            if reason is None and entry.is_dir():
                real = os.path.realpath(path)
                if real in seen:
                    reason = "symlink-loop: the folder was already read under another name"
                else:
                    seen.add(real)
                    stack.append(path)
                    continue
            if reason is None:
                ext = os.path.splitext(entry.name)[1][1:].lower()
                if ext in exts:
                    found.append(_rel(path, root))
                    continue
                reason = f"not-an-image-name: extension '{ext}' is not one of the card's extensions"
            skipped.append({"relpath": _rel(path, root), "reason": reason})
    return sorted(found), skipped
