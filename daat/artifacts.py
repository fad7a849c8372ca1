"""The one place that knows the artifact manifest.

An artifact is a directory ``<out>/<kind>-<key16>`` holding ``manifest.json``:

    {"schema": 1, "kind": "shards", "id": "shards-ab12...", "key": <sha256 of determining config>,
     "status": "incomplete" | "complete", "created": iso, "updated": iso,
     "lineage": [ids of input artifacts], "config": <resolved config>, "determining": {...},
     "versions": {python, torch, timm, ...}, "files": {relpath: {sha256, bytes, samples}},
     "extra": {stage-specific facts: sample counts, skipped inputs, ...}}

Files are written under a temporary name and renamed into place; the manifest itself too.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from daat.errors import DaatError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_VERSIONED_PACKAGES = ("daat", "torch", "timm", "transformers", "webdataset", "zarr", "numpy",
                       "pillow")


class ArtifactError(DaatError):
    """An artifact is missing, malformed, of the wrong kind, or fails verification."""


def content_key(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync and rename it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; artifacts are shared datasets, so honour the umask instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(final, text.encode())


def atomic_write_json(final: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


class Artifact:
    """A handle on an artifact directory and its manifest."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # -- identity -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def complete(self) -> bool:
        return self.manifest["status"] == "complete"

    @property
    def finished(self) -> str | None:
        """When it was marked complete (ISO 8601, UTC); None while incomplete."""
        return self.manifest.get("updated") if self.complete else None

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})

    @property
    def extra(self) -> dict:
        return self.manifest.setdefault("extra", {})

    def __repr__(self) -> str:
        return f"Artifact({self.id}, {self.manifest['status']}, {self.path})"

    # -- writing --------------------------------------------------------------------------
    def save(self) -> None:
        self.manifest["updated"] = _now()
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def record_file(self, relpath: str, samples: int | None = None, sha256: str | None = None) -> dict:
        """Hash ``relpath`` (already in place) into the manifest; does not save."""
        full = self.path / relpath
        if not full.is_file():
            raise ArtifactError(f"{self.id}: cannot record missing file {relpath}")
        entry = {"sha256": sha256 or sha256_file(full), "bytes": full.stat().st_size}
        if samples is not None:
            entry["samples"] = int(samples)
        self.manifest["files"][relpath] = entry
        return entry

    def write_bytes(self, relpath: str, data: bytes, samples: int | None = None) -> dict:
        atomic_write_bytes(self.path / relpath, data)
        return self.record_file(relpath, samples, hashlib.sha256(data).hexdigest())

    def write_json(self, relpath: str, obj: Any) -> dict:
        blob = (json.dumps(obj, indent=2, default=str) + "\n").encode()
        return self.write_bytes(relpath, blob)

    def mark_complete(self) -> None:
        self.manifest["status"] = "complete"
        self.save()

    def mark_incomplete(self) -> None:
        self.manifest["status"] = "incomplete"
        self.save()

    # -- reading --------------------------------------------------------------------------
    def file(self, relpath: str) -> Path:
        path = self.path / relpath
        if not path.is_file():
            raise ArtifactError(f"{self.id}: file {relpath} is missing")
        return path

    def files_matching(self, prefix: str) -> list[str]:
        return sorted(p for p in self.manifest["files"] if p.startswith(prefix))


def create_or_open(out_root: str | os.PathLike, kind: str, determining: dict, *,
                   config: dict, lineage: list[str] = (), extra: dict | None = None) -> Artifact:
    """Return the artifact with this content key under ``out_root``, creating it if absent.

    A complete one is returned as is (the caller reuses it); an incomplete one is returned for the
    caller to resume; otherwise a fresh directory with an ``incomplete`` manifest is made.
    """
    key = content_key({"kind": kind, "determining": determining, "lineage": list(lineage)})
    art_id = f"{kind}-{key[:16]}"
    path = Path(out_root) / art_id
    if (path / MANIFEST).is_file():
        art = open_artifact(path)
        if art.manifest["key"] != key:
            raise ArtifactError(f"{path}: manifest key does not match its directory name")
        return art
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "schema": SCHEMA_VERSION, "kind": kind, "id": art_id, "key": key,
        "status": "incomplete", "created": _now(), "updated": _now(),
        "lineage": list(lineage), "config": config, "determining": determining,
        "versions": package_versions(), "files": {}, "extra": dict(extra or {}),
    }
    art = Artifact(path, manifest)
    art.save()
    return art


def open_artifact(path: str | os.PathLike, kind: str | None = None,
                  require_complete: bool = False) -> Artifact:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not an artifact (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{manifest_path}: corrupt manifest: {e}") from e
    for field in ("schema", "kind", "id", "key", "status", "files"):
        if field not in manifest:
            raise ArtifactError(f"{manifest_path}: manifest lacks '{field}'")
    if manifest["schema"] > SCHEMA_VERSION:
        raise ArtifactError(f"{manifest_path}: schema {manifest['schema']} is newer than this "
                            f"daat understands ({SCHEMA_VERSION}); upgrade daat")
    if kind is not None and manifest["kind"] != kind:
        raise ArtifactError(f"{path} is a '{manifest['kind']}' artifact, expected '{kind}'")
    if require_complete and manifest["status"] != "complete":
        raise ArtifactError(f"{path} is incomplete; rerun the command that makes it to finish it")
    return Artifact(path, manifest)


def find(out_root: str | os.PathLike, artifact_id: str) -> Artifact:
    """Open an artifact by path or by id under ``out_root``."""
    if Path(artifact_id, MANIFEST).is_file():
        return open_artifact(artifact_id)
    return open_artifact(Path(out_root) / artifact_id)


def list_artifacts(root: str | os.PathLike) -> list[Artifact]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            found.append(open_artifact(manifest.parent))
        except ArtifactError as e:
            warnings.warn(f"skipping {manifest.parent}: {e}", stacklevel=2)
    return found


def verify(path: str | os.PathLike) -> list[str]:
    """Re-hash every file in the manifest; return one problem line per bad file (empty = good)."""
    art = open_artifact(path)
    problems = []
    if not art.complete:
        problems.append(f"status is '{art.manifest['status']}', not complete")
    for relpath, entry in sorted(art.manifest["files"].items()):
        full = art.path / relpath
        if not full.is_file():
            problems.append(f"{relpath}: missing")
            continue
        size = full.stat().st_size
        if size != entry["bytes"]:
            problems.append(f"{relpath}: {size} bytes, manifest says {entry['bytes']}")
            continue
        digest = sha256_file(full)
        if digest != entry["sha256"]:
            problems.append(f"{relpath}: sha256 {digest[:12]}… differs from manifest "
                            f"{entry['sha256'][:12]}…")
    return problems
