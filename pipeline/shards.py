"""The shard format, writer and reader: the only module that knows how a shard looks.

A shard artifact holds, per split, WebDataset tars ``{split}/{split}-{shard:05d}.tar`` and beside
each a sidecar ``{split}-{shard:05d}.json`` (keys, skipped inputs, the tar's sha256). A sample is
four members under the key ``{split}-{index:09d}`` (``index`` = the card's item index, so keys are
stable across runs and ranks):

- ``jpg``: the image, resized once, JPEG at ``data.jpeg_quality``;
- ``cls``: the label as ASCII digits;
- ``json``: source relpath, original and stored size, depth model id, saliency scale, and for
  the synthetic cue-conflict split ``texture_label`` (the class whose spurious texture the object
  wears; ``cls`` is its shape's class);
- ``sal.png``: E(g(x)) at the stored image's exact size, 8-bit greyscale in the code of
  ``pipeline/saliency_codec.py`` (``SAL_ENCODING``; decoded ``E = scale*(q/255)^2``).

``ShardWriter.write`` lays out a preprocess ``Record`` as these members, its json included
(``sample_json``); nothing else builds a sample.

Nothing here unpickles: members are decoded by PIL, ``int`` and ``json.loads``; any other member
raises ``ShardFormatError``. ``iter_raw`` / ``decode`` read samples; ``open_shards`` checks an
artifact and answers questions about it; the batch readers on top are in ``pipeline/loaders.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from daat.artifacts import (
    Artifact,
    FileGuard,
    atomic_path,
    atomic_write_json,
    open_artifact,
    sha256_file,
)
from daat.errors import ShardFormatError
from daat.pipeline import ustar
from daat.pipeline.saliency_codec import SAL_ENCODING, decode_png_l, dequantise_saliency, png_bytes

if TYPE_CHECKING:
    from daat.pipeline.records import Record

# torch is never imported here: ``daat preprocess`` answers "already done" from the manifest
# alone, and that path should not pay torch's multi-second import.

FORMAT_VERSION = 1
MEMBERS = ("jpg", "cls", "json", "sal.png")
TEXTURE_LABEL = "texture_label"  # json key: the texture's class on the cue-conflict split
_MEMBER_RE = re.compile(r"^([^./]+)\.(.+)$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


def check_split(split: str) -> str:
    """Split names become key prefixes and directory names: letters, digits and _ only."""
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ShardFormatError(
            f"split name {split!r} must be letters, digits or _ (it becomes "
            f"part of every sample key and a directory name)"
        )
    return split


def sample_key(split: str, index: int) -> str:
    return f"{split}-{index:09d}"


def shard_relpath(split: str, shard: int) -> str:
    return f"{split}/{split}-{shard:05d}.tar"


def sidecar_relpath(split: str, shard: int) -> str:
    return f"{split}/{split}-{shard:05d}.json"


# --- writer ---------------------------------------------------------------------------------


def sample_json(record: Record) -> dict:
    """The ``json`` member of a finished record: source relpath, label, original (``orig_hw``)
    and stored (``hw``) size, depth model id, saliency scale and encoding, the texture's class on
    the cue-conflict split and the decoder's notes when there are any."""
    meta = {
        "relpath": record.relpath,
        "label": record.label,
        "orig_hw": list(record.orig_hw),
        "depth_model": record.depth_model,
    }
    if record.texture_label is not None:
        meta[TEXTURE_LABEL] = record.texture_label
    if record.notes:
        meta["notes"] = list(record.notes)
    meta["hw"] = list(record.saliency.shape)
    meta["sal_scale"] = record.scale
    meta["sal_encoding"] = SAL_ENCODING
    return meta


class ShardWriter:
    """Writes one shard to a temp file; ``close`` renames it into place, then the sidecar.
    ``planned`` is every (key, relpath) the shard should account for; each must be either added
    or skipped before ``close``, so a finished shard never silently loses an input."""

    def __init__(
        self, root: str | os.PathLike, split: str, shard: int, planned: list[tuple[str, str]]
    ):
        self.root, self.split, self.shard = Path(root), check_split(split), shard
        self.planned = dict(planned)
        self.keys: list[str] = []
        self.skipped: list[dict] = []
        self._seen: set[str] = set()
        final = self.root / shard_relpath(split, shard)
        sidecar = self.root / sidecar_relpath(split, shard)
        for name in (final.name, sidecar.name):
            for stale in final.parent.glob(f".{name}.*.tmp"):
                stale.unlink()  # left by a killed run; this rank owns the shard now
        self._ctx = atomic_path(final)
        self._tmp = self._ctx.__enter__()
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)

    def _claim(self, key: str) -> None:
        where = shard_relpath(self.split, self.shard)
        if key not in self.planned:
            raise ShardFormatError(f"{where}: key {key} not planned")
        if key in self._seen:
            raise ShardFormatError(f"{where}: duplicate key {key}")
        self._seen.add(key)

    def add(self, key: str, *, jpg: bytes, label: int, meta: dict, sal_png: bytes) -> None:
        self._claim(key)
        ustar.add(self._tar, f"{key}.jpg", jpg)
        ustar.add(self._tar, f"{key}.cls", str(int(label)).encode("ascii"))
        ustar.add(self._tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        ustar.add(self._tar, f"{key}.sal.png", sal_png)
        self.keys.append(key)

    def write(self, record: Record) -> None:
        """Add a finished (not skipped) record's sample: its JPEG, label, ``sample_json`` and
        saliency code."""
        self.add(
            record.key,
            jpg=record.jpg,
            label=record.label,
            meta=sample_json(record),
            sal_png=png_bytes(record.saliency),
        )

    def skip(self, key: str, reason: str) -> None:
        self._claim(key)
        self.skipped.append({"key": key, "relpath": self.planned[key], "reason": reason})

    def close(self) -> dict:
        missing = set(self.planned) - set(self.keys) - {s["key"] for s in self.skipped}
        if missing:
            self.abort()
            raise ShardFormatError(
                f"{shard_relpath(self.split, self.shard)}: {len(missing)} "
                f"planned inputs neither written nor skipped"
            )
        self._tar.close()
        sha, size = sha256_file(self._tmp), self._tmp.stat().st_size
        self._ctx.__exit__(None, None, None)
        sidecar = {
            "format": FORMAT_VERSION,
            "split": self.split,
            "shard": self.shard,
            "tar": shard_relpath(self.split, self.shard),
            "sha256": sha,
            "bytes": size,
            "samples": len(self.keys),
            "keys": self.keys,
            "skipped": self.skipped,
        }
        atomic_write_json(self.root / sidecar_relpath(self.split, self.shard), sidecar)
        return sidecar

    def abort(self) -> None:
        self._tar.close()
        self._ctx.__exit__(ShardFormatError, None, None)


def finished_sidecar(
    root: str | os.PathLike, split: str, shard: int, planned_keys: list[str]
) -> dict | None:
    """The sidecar of a shard that is done (tar + sidecar exist and agree), else None."""
    root = Path(root)
    tar, side = root / shard_relpath(split, shard), root / sidecar_relpath(split, shard)
    if not (tar.is_file() and side.is_file()):
        return None
    try:
        sidecar = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    accounted = list(sidecar.get("keys", [])) + [s["key"] for s in sidecar.get("skipped", [])]
    if (
        sidecar.get("format") != FORMAT_VERSION
        or sorted(accounted) != sorted(planned_keys)
        or sidecar.get("bytes") != tar.stat().st_size
        or sidecar.get("sha256") != sha256_file(tar)
    ):
        return None
    return sidecar


def record_split(art: Artifact, split: str, planned: list[list[str]]) -> dict:
    """Record a split's finished shards (tar with its sample count, and sidecar) in the manifest
    and return its ``extra.splits[split]`` entry. ``planned[s]`` = the keys shard s accounts for."""
    tars, samples, skipped = [], 0, []
    for s, keys in enumerate(planned):
        sidecar = finished_sidecar(art.path, split, s, keys)
        if sidecar is None:
            raise ShardFormatError(
                f"{art.path}: {shard_relpath(split, s)} is missing or does not "
                f"match its sidecar; rerun to redo it"
            )
        art.record_file(
            shard_relpath(split, s), samples=sidecar["samples"], sha256=sidecar["sha256"]
        )
        art.record_file(sidecar_relpath(split, s))
        tars.append(shard_relpath(split, s))
        samples += sidecar["samples"]
        skipped += [{"relpath": x["relpath"], "reason": x["reason"]} for x in sidecar["skipped"]]
    return {
        "samples": samples,
        "inputs": sum(map(len, planned)),
        "shards": tars,
        "skipped": {"count": len(skipped), "items": skipped},
    }


def describe(
    art: Artifact, *, classes: list[str], splits: dict, depth_model: str, image: dict, card: dict
) -> None:
    """Fill the manifest facts the readers rely on (does not save)."""
    art.extra.update(
        {
            "format": FORMAT_VERSION,
            "classes": list(classes),
            "num_classes": len(classes),
            "splits": splits,
            "depth_model": depth_model,
            "card": card,
            "members": list(MEMBERS),
            "image": image,
            "saliency": {
                "encoding": SAL_ENCODING,
                "member": "sal.png",
                "what": "Sobel magnitude of the depth model's output at the stored size",
                "decode": "E = sal_scale * (q / 255) ** 2, sal_scale in the sample json",
            },
        }
    )


# --- reading raw samples --------------------------------------------------------------------


def iter_raw(path: str | os.PathLike) -> Iterator[dict]:
    """Samples of one tar as ``{"__key__", "__url__", member: bytes}``; refuses anything that is
    not one of ``MEMBERS`` (pickles above all), non-files, dotted keys and split samples."""
    where = str(path)
    current: dict | None = None
    seen: set[str] = set()
    for name, data in ustar.entries(path):
        match = _MEMBER_RE.match(name)
        if not match or match.group(2) not in MEMBERS:
            raise ShardFormatError(
                f"{where}: member '{name}' is not allowed (allowed: "
                f"<key>.{{{','.join(MEMBERS)}}}); refusing the shard"
            )
        key, ext = match.groups()
        if current is None or key != current["__key__"]:
            if current is not None:
                yield _complete(current, where)
            if key in seen:
                raise ShardFormatError(f"{where}: sample {key} appears twice")
            seen.add(key)
            current = {"__key__": key, "__url__": where}
        if ext in current:
            raise ShardFormatError(f"{where}: duplicate member {name}")
        current[ext] = data
    if current is not None:
        yield _complete(current, where)


def _complete(sample: dict, where: str) -> dict:
    missing = [m for m in MEMBERS if m not in sample]
    if missing:
        raise ShardFormatError(f"{where}: sample {sample['__key__']} lacks {', '.join(missing)}")
    return sample


@dataclass
class Sample:
    key: str
    image: np.ndarray  # uint8 HxWx3
    label: int
    meta: dict
    saliency: np.ndarray  # float32 HxW, E at the image's size


def decode(raw: dict) -> Sample:
    """Decode one raw sample with our own decoders (PIL, int, json), checking sizes agree."""
    label, meta, image, q, scale = decode_members(raw)
    return Sample(raw["__key__"], image, label, meta, dequantise_saliency(q, scale))


def decode_members(raw: dict) -> tuple[int, dict, np.ndarray, np.ndarray, float]:
    """(label, meta, image uint8 HxWx3, quantised saliency uint8 HxW, its scale): ``decode``
    without dequantising the whole map (the training reader dequantises only its crop)."""
    where = f"{raw['__url__']}:{raw['__key__']}"
    try:
        label = int(raw["cls"].decode("ascii"))
        meta = json.loads(raw["json"])
        scale = float(meta["sal_scale"])
        with Image.open(io.BytesIO(raw["jpg"])) as img:
            if img.format != "JPEG":
                raise ShardFormatError(f"{where}: jpg member is {img.format}, not JPEG")
            image = np.array(img if img.mode == "RGB" else img.convert("RGB"))
        q = decode_png_l(raw["sal.png"], where)
    except ShardFormatError:
        raise
    except (ValueError, KeyError, OSError) as e:
        raise ShardFormatError(f"{where}: undecodable sample: {type(e).__name__}: {e}") from e
    if q.shape != image.shape[:2] or list(image.shape[:2]) != list(meta["hw"]):
        raise ShardFormatError(
            f"{where}: image {image.shape[:2]}, saliency {q.shape} and "
            f"json hw {meta['hw']} disagree"
        )
    return label, meta, image, q, scale


# --- the artifact ---------------------------------------------------------------------------


class ShardArtifact(Artifact):
    """A complete shard artifact with helpers for the readers."""

    @property
    def classes(self) -> list[str]:
        return list(self.extra["classes"])

    @property
    def num_classes(self) -> int:
        return int(self.extra["num_classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.extra["splits"])

    def split_size(self, split: str) -> int:
        return int(self._split(split)["samples"])

    def guard(self, splits: list[str] | None = None) -> FileGuard:
        """A ``FileGuard`` over the tars of ``splits`` (default: all), for the stages that read."""
        return FileGuard(
            self, [rel for split in (splits or self.splits) for rel in self._split(split)["shards"]]
        )

    def shards(self, split: str) -> list[tuple[Path, int]]:
        """(tar path, samples) in shard order."""
        return [
            (self.path / rel, self.manifest["files"][rel]["samples"])
            for rel in self._split(split)["shards"]
        ]

    @property
    def image_policy(self) -> dict:
        return dict(self.extra["image"])

    @property
    def saliency_encoding(self) -> str:
        return self.extra["saliency"]["encoding"]

    @property
    def depth_model(self) -> str:
        return self.extra["depth_model"]

    def _split(self, split: str) -> dict:
        if split not in self.extra["splits"]:
            raise ShardFormatError(f"{self.path}: no split '{split}' (has {self.splits})")
        return self.extra["splits"][split]


def open_shards(path: str | os.PathLike | Artifact) -> ShardArtifact:
    """Open and check a shard artifact: kind, completeness, format version, that its facts agree
    (classes, each split's shard list and counts) and every tar's size is the manifest's."""
    if isinstance(path, ShardArtifact):
        return path
    art = open_artifact(
        path.path if isinstance(path, Artifact) else path, kind="shards", require_complete=True
    )
    extra = art.manifest.get("extra", {})
    for field in ("format", "classes", "num_classes", "splits", "saliency", "image"):
        if field not in extra:
            raise ShardFormatError(f"{art.path}: manifest extra lacks '{field}'")
    if extra["format"] != FORMAT_VERSION or extra["saliency"].get("encoding") != SAL_ENCODING:
        raise ShardFormatError(
            f"{art.path}: shard format {extra['format']} / saliency "
            f"{extra['saliency'].get('encoding')} is not what this daat reads "
            f"({FORMAT_VERSION} / {SAL_ENCODING})"
        )
    shards = ShardArtifact(art.path, art.manifest)
    if len(extra["classes"]) != extra["num_classes"]:
        raise ShardFormatError(
            f"{art.path}: num_classes is {extra['num_classes']} but "
            f"{len(extra['classes'])} classes are named"
        )
    for split, info in extra["splits"].items():
        made = [r for r in art.files_matching(f"{split}/") if r.endswith(".tar")]
        if info["shards"] != [shard_relpath(split, s) for s in range(len(made))]:
            raise ShardFormatError(
                f"{art.path}: split {split} lists {len(info['shards'])} "
                f"shards, its manifest records {len(made)} tars"
            )
        counted = sum(art.manifest["files"][rel].get("samples", 0) for rel in info["shards"])
        if counted != info["samples"]:
            raise ShardFormatError(
                f"{art.path}: split {split} says {info['samples']} samples, "
                f"its shards hold {counted}"
            )
    problems = shards.guard().sizes()  # a stat per tar: truncation is caught here, not mid-run
    if problems:
        raise ShardFormatError(f"{art.path}: {problems[0]}; restore the shard or preprocess again")
    return shards


def iter_samples(shard_art: str | os.PathLike | Artifact, split: str) -> Iterator[Sample]:
    """Every decoded sample of a split in key order (single process; tests, figures, tools)."""
    for path, _ in open_shards(shard_art).shards(split):
        for raw in iter_raw(path):
            yield decode(raw)
