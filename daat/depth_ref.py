"""Naming depth models without loading them (no torch import): the oracle, local directories
versus hub ids, and the identity that goes into content keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

from daat.errors import DaatError

ORACLE = "oracle"
HASHED_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


class DepthModelError(DaatError):
    """A depth model cannot be loaded or its preprocessing config is unusable."""


def is_oracle(name: str) -> bool:
    return isinstance(name, str) and name.strip().lower() == ORACLE


def resolve(name: str) -> tuple[str, bool]:
    path = Path(name).expanduser()
    if path.is_dir():
        for needed in HASHED_FILES:
            if not (path / needed).is_file():
                raise DepthModelError(
                    f"depth model directory {path} has no {needed} (save both "
                    "the model and its image processor with save_pretrained)"
                )
        return str(path), True
    if path.exists():
        raise DepthModelError(
            f"depth model '{name}' is a file; expected a hub id or a "
            "directory written by save_pretrained"
        )
    if looks_like_path(name):
        raise DepthModelError(f"depth model directory not found: {name}")
    return name, False


def looks_like_path(name: str) -> bool:
    # Hub ids are 'repo' or 'org/repo'; anything else with separators is meant as a path.
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def dir_hash(path: Path) -> str:
    """Short sha256 over the config, processor config and weight files of a local model."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.name in HASHED_FILES or p.suffix in WEIGHT_SUFFIXES)
    )
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:12]


def identity(name: str) -> str:
    """What identifies a depth model in a content key, known without loading it: a local
    directory by a hash of its config and weights (a retrained model in the same place gives a
    new artifact), a hub id by its name."""
    if is_oracle(name):
        return ORACLE
    source, local = resolve(name)
    return f"{name}@{dir_hash(Path(source))}" if local else name


def same_model(name: str, recorded_name: str, recorded_id: str) -> bool:
    """Whether depth model ``name`` is the one an artifact recorded: ``recorded_name`` as it was
    given then, ``recorded_id`` the loaded model's id (``oracle``, ``hub-id@commit`` or
    ``dir@hash``). A local directory matches by the hash of its files, wherever it now lies."""
    if is_oracle(name) or is_oracle(recorded_id):
        return is_oracle(name) and is_oracle(recorded_id)
    source, local = resolve(name)
    if local:
        return recorded_id.rpartition("@")[2] == dir_hash(Path(source))
    return name in (recorded_name, recorded_id.partition("@")[0])
