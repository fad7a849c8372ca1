"""The one place that knows the artifact manifest.

An artifact is a directory ``<out>/<kind>-<key16>`` holding ``manifest.json``:

    {"schema": 2, "kind": "shards", "id": "shards-ab12...", "key": <sha256 of determining config>,
     "status": "incomplete" | "complete", "created": iso, "updated": iso,
     "lineage": [ids of input artifacts], "config": <resolved config>, "determining": {...},
     "versions": {python, torch, timm, ...}, "files": {relpath: {sha256, bytes, samples}},
     "extra": {stage-specific facts: sample counts, skipped inputs, ...},
     "digest": <sha256 of every field above>}

Files are written under a temporary name and renamed into place (``daat/atomic_files.py``); the
manifest itself too. The manifest checks itself: ``digest`` covers all its other fields, so an
edited class list, a shard dropped from a split or a changed ``num_classes`` makes every reader
refuse it (a digest is not a signature: it catches edits and damage, not someone who recomputes
it). File entries are relative paths inside the artifact. One process writes an artifact at a
time (``create_or_open`` takes its writer lock, ``daat/locks.py``); any number read it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import warnings
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

# Re-exported: the stages import the atomic writers and FileGuard from here, beside the manifest.
from daat.atomic_files import (  # noqa: F401
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from daat.errors import DaatError
from daat.file_guard import FileGuard  # noqa: F401
from daat.locks import WriterLock

SCHEMA_VERSION = 2  # 2: the manifest carries its own digest
MANIFEST = "manifest.json"
DIGEST = "digest"
_VERSIONED_PACKAGES = (
    "daat",
    "torch",
    "timm",
    "transformers",
    "webdataset",
    "zarr",
    "numpy",
    "pillow",
)


class ArtifactError(DaatError):
    """An artifact is missing, malformed, of the wrong kind, or fails verification."""


def content_key(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of every manifest field but ``digest``, as they read back from JSON."""
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    return content_key(json.loads(json.dumps(body, default=str)))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class Artifact:
    """A handle on an artifact directory and its manifest."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._lock: WriterLock | None = None

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

    @property
    def content_digest(self) -> str:
        """sha256 over the recorded files (path, sha256, size): it changes when any file's bytes
        do, so a key that includes it can never name the same result for other content."""
        return content_key(
            {rel: [e["sha256"], e["bytes"]] for rel, e in self.manifest["files"].items()}
        )

    def __repr__(self) -> str:
        return f"Artifact({self.id}, {self.manifest['status']}, {self.path})"

    # -- the writer lock ------------------------------------------------------------------
    def lock(self) -> None:
        """Become the artifact's one writer, or raise ``ArtifactInUse`` naming the holder."""
        if self._lock is None:
            self._lock = WriterLock.acquire(self.path)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- writing --------------------------------------------------------------------------
    def save(self) -> None:
        self.manifest["updated"] = _now()
        self.manifest["schema"] = SCHEMA_VERSION
        self.manifest[DIGEST] = manifest_digest(self.manifest)
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def record_file(
        self, relpath: str, samples: int | None = None, sha256: str | None = None
    ) -> dict:
        """Hash ``relpath`` (already in place) into the manifest; does not save."""
        if _unsafe_relpath(relpath):
            raise ArtifactError(f"{self.id}: file entry {relpath!r} is not a plain relative path")
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
        if _unsafe_relpath(relpath) or not _inside(path, self.path):
            raise ArtifactError(f"{self.id}: file {relpath} lies outside the artifact")
        if not path.is_file():
            raise ArtifactError(f"{self.id}: file {relpath} is missing")
        return path

    def files_matching(self, prefix: str) -> list[str]:
        return sorted(p for p in self.manifest["files"] if p.startswith(prefix))

    def check_file(self, relpath: str) -> str | None:
        """Why ``relpath`` does not hold the bytes the manifest records (not recorded, missing,
        outside the artifact, another size or sha256), or None if it does."""
        entry = self.manifest["files"].get(relpath)
        if entry is None:
            return f"{relpath}: not recorded in the manifest"
        return _file_problem(self.path, relpath, entry)

    def recorded_bytes(self, relpath: str) -> int | None:
        """The size the manifest records for ``relpath``; None when it is not recorded."""
        entry = self.manifest["files"].get(relpath)
        return None if entry is None else entry["bytes"]


def create_or_open(
    out_root: str | os.PathLike,
    kind: str,
    determining: dict,
    *,
    config: dict,
    lineage: list[str] = (),
    extra: dict | None = None,
    lock: bool = True,
) -> Artifact:
    """Return the artifact with this content key under ``out_root``, creating it if absent.

    A complete one is returned as is, unlocked (the caller reuses it); an incomplete or new one
    is returned holding its writer lock (``lock=True``; the caller resumes or fills it and
    ``unlock``s it at the end), or ``ArtifactInUse`` is raised at once if another process holds
    it. ``lock=False`` is for the other ranks of a job whose rank 0 holds the lock.
    """
    key = content_key({"kind": kind, "determining": determining, "lineage": list(lineage)})
    art_id = f"{kind}-{key[:16]}"
    path = Path(out_root) / art_id
    if (path / MANIFEST).is_file():
        art = _open_keyed(path, key)
        if not lock or (art.complete and art.manifest[DIGEST] is not None):
            return art
    path.mkdir(parents=True, exist_ok=True)
    held = WriterLock.acquire(path) if lock else None
    try:
        if (path / MANIFEST).is_file():  # read again under the lock: a writer may just have ended
            art = _open_keyed(path, key)
            if art.manifest[DIGEST] is None:
                _upgrade(art)
        else:
            art = Artifact(
                path,
                {
                    "schema": SCHEMA_VERSION,
                    "kind": kind,
                    "id": art_id,
                    "key": key,
                    "status": "incomplete",
                    "created": _now(),
                    "updated": _now(),
                    "lineage": list(lineage),
                    "config": config,
                    "determining": determining,
                    "versions": package_versions(),
                    "files": {},
                    "extra": dict(extra or {}),
                },
            )
            art.save()
    except BaseException:
        if held is not None:
            held.release()
        raise
    art._lock = held
    return art


def _open_keyed(path: Path, key: str) -> Artifact:
    art = Artifact(path, _read_manifest(path, allow_old=True))
    if art.manifest["key"] != key:
        raise ArtifactError(f"{path}: manifest key does not match its directory name")
    return art


def _upgrade(art: Artifact) -> None:
    """Give a manifest written before manifests carried a digest one, after re-hashing every
    file it lists (a complete artifact is only trusted again if all its files still match)."""
    problems = _manifest_problems(art.manifest, digest=False)
    if art.complete:
        problems += [
            p
            for rel, entry in sorted(art.manifest["files"].items())
            if (p := _file_problem(art.path, rel, entry))
        ]
    if problems:
        raise ArtifactError(
            f"{art.path} was made by an older daat and cannot be upgraded: "
            f"{problems[0]}; delete it and run the command again"
        )
    art.save()


def open_artifact(
    path: str | os.PathLike, kind: str | None = None, require_complete: bool = False
) -> Artifact:
    """Open an artifact for reading: the manifest must parse, match its digest and list only
    files inside the artifact."""
    path = Path(path)
    manifest = _read_manifest(path)
    if kind is not None and manifest["kind"] != kind:
        raise ArtifactError(f"{path} is a '{manifest['kind']}' artifact, expected '{kind}'")
    if require_complete and manifest["status"] != "complete":
        raise ArtifactError(f"{path} is incomplete; rerun the command that makes it to finish it")
    return Artifact(path, manifest)


def _read_manifest(path: Path, allow_old: bool = False, check: bool = True) -> dict:
    """The parsed manifest; ``allow_old``: one without a digest (schema 1) reads with
    ``digest: None`` (``create_or_open`` upgrades it); ``check=False``: no digest or path check
    (``verify`` reports those problems instead of raising)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not an artifact (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{manifest_path}: corrupt manifest: {e}") from e
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path}: corrupt manifest: not a JSON object")
    for field in ("schema", "kind", "id", "key", "status", "files"):
        if field not in manifest:
            raise ArtifactError(f"{manifest_path}: manifest lacks '{field}'")
    if not isinstance(manifest["schema"], int) or manifest["schema"] > SCHEMA_VERSION:
        raise ArtifactError(
            f"{manifest_path}: schema {manifest['schema']} is newer than this "
            f"daat understands ({SCHEMA_VERSION}); upgrade daat"
        )
    if manifest["schema"] < SCHEMA_VERSION and allow_old:
        manifest.setdefault(DIGEST, None)
        return manifest
    problems = _manifest_problems(manifest) if check else []
    if problems:
        raise ArtifactError(f"{manifest_path}: {problems[0]}")
    return manifest


def _manifest_problems(manifest: dict, digest: bool = True) -> list[str]:
    """Problems of the manifest itself: its digest (unless ``digest=False``), its file entries."""
    problems = []
    if digest and (manifest.get("schema", 0) < SCHEMA_VERSION or not manifest.get(DIGEST)):
        problems.append(
            "manifest has no digest (written by an older daat); run the command that "
            "made it again to re-verify its files and upgrade it"
        )
    elif digest and manifest[DIGEST] != manifest_digest(manifest):
        problems.append(
            "manifest digest does not match its fields: the manifest was edited or "
            "damaged after it was written; remake the artifact (delete it and run the "
            "command again)"
        )
    if not isinstance(manifest["files"], dict):
        return problems + ["manifest 'files' is not a mapping"]
    return problems + [
        f"file entry {rel!r} points outside the artifact; refusing it"
        for rel in manifest["files"]
        if _unsafe_relpath(rel)
    ]


def _unsafe_relpath(rel: Any) -> bool:
    """Not a plain relative POSIX path below the artifact (absolute, '..', '.', empty parts)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return True
    return PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in rel.split("/"))


def _inside(full: Path, root: Path) -> bool:
    """``full`` (symlinks resolved) lies inside ``root``."""
    return full.resolve().is_relative_to(root.resolve())


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


def _file_problem(root: Path, relpath: str, entry: dict) -> str | None:
    """Why ``relpath`` does not hold the bytes ``entry`` records, or None if it does."""
    full = root / relpath
    if _unsafe_relpath(relpath) or not _inside(full, root):
        return f"{relpath}: lies outside the artifact"
    if not full.is_file():
        return f"{relpath}: missing"
    size = full.stat().st_size
    if size != entry.get("bytes"):
        return f"{relpath}: {size} bytes, manifest says {entry.get('bytes')}"
    digest = sha256_file(full)
    if digest != entry.get("sha256"):
        return (
            f"{relpath}: sha256 {digest[:12]}… differs from manifest {entry.get('sha256')!s:.12}…"
        )
    return None


def verify(path: str | os.PathLike) -> list[str]:
    """Check the manifest (digest, file entries inside the artifact) and re-hash every file it
    lists; return one problem line per bad file or field (empty = good)."""
    path = Path(path)
    manifest = _read_manifest(path, check=False)
    problems = _manifest_problems(manifest)
    if manifest["status"] != "complete":
        problems.append(f"status is '{manifest['status']}', not complete")
    if isinstance(manifest["files"], dict):
        problems += [
            p
            for rel, entry in sorted(manifest["files"].items())
            if not _unsafe_relpath(rel) and (p := _file_problem(path, rel, entry))
        ]
    return problems
