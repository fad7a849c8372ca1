"""Data cards: YAML files that describe a dataset's layout, classes, counts and licence.

A card describes a layout, not a machine: where the images live is ``--root DIR``. ``load_card``
takes a packaged card name (``data_cards/NAME.yaml``), a YAML path, or a plain ImageFolder
directory (``train/<class>/...``, ``val/<class>/...``) from which a card is inferred. The resolved
card (``Card.to_dict()``) is itself a valid card, so an artifact that saves it records exactly what
was read, inferred cards included.

Schema (unknown keys are errors naming the file and key):

    name: str                       # required
    kind: imagefolder | synthetic   # required
    description: str
    licence: str
    splits: {train: train, val: val}          # split name -> sub-directory of --root
    classes: [a, b, ...] | {file: NAME} | infer
        # {file: NAME}: one class per line, looked up in daat/data/ then beside the card;
        # infer: the sorted sub-directory names of the first split's directory under --root
    class_names: {class: display name}         # optional
    expected_counts: {train: N, val: M}        # a mismatch is a warning with both numbers
    extensions: [jpg, jpeg, png, ...]          # imagefolder only; matched case-insensitively
    preprocessing: str | mapping               # notes on how the paper preprocessed it
    synthetic: {n_train_per_class, n_val_per_class, size, spurious, seed[, spurious_rate, clutter,
                n_cue_conflict_per_pair]}
        # a synthetic card may list the split cue_conflict (spurious cards only): preprocess
        # always writes it beside the requested splits; evaluation reports shape vs texture on it
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from daat import synthetic
from daat.strict_yaml import load_yaml, yaml_problem
from daat.errors import DataError

log = logging.getLogger(__name__)

KINDS = ("imagefolder", "synthetic")
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
DEFAULT_SPLITS = {"train": "train", "val": "val"}
KEYS = (
    "name",
    "kind",
    "description",
    "licence",
    "splits",
    "classes",
    "class_names",
    "expected_counts",
    "extensions",
    "preprocessing",
    "synthetic",
)


class CardWarning(UserWarning):
    """The data on disk differs from what the card expects (e.g. image counts)."""


@dataclass(frozen=True)
class SourceItem:
    index: int  # position in the split's sorted list (stable across runs and machines)
    label: int
    relpath: str  # posix path relative to --root (synthetic: a readable id)
    path: Path | None  # absolute file path; None for synthetic items
    synthetic: synthetic.SyntheticItem | None


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(message, CardWarning, stacklevel=3)


# --- finding and reading cards ---------------------------------------------------------------


def card_names() -> list[str]:
    """The packaged cards (``daat.data_cards``)."""
    return sorted(
        p.name[:-5]
        for p in resources.files("daat.data_cards").iterdir()
        if p.name.endswith(".yaml")
    )


def load_card(card: str | os.PathLike, root: str | os.PathLike | None = None) -> Card:
    """A packaged card name, a card YAML path, or an ImageFolder directory (card inferred)."""
    text = os.fspath(card)
    path = Path(text).expanduser()
    bare = os.sep not in text and "/" not in text and path.suffix not in (".yaml", ".yml")
    if bare and text in card_names():
        packaged = resources.files("daat.data_cards") / f"{text}.yaml"
        return _from_yaml(packaged.read_text(), f"data card '{text}'", None, root)
    if path.is_dir():
        return _infer(path, root)
    if path.is_file():
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read data card {path}: {e}") from e
        return _from_yaml(source, str(path), path.parent, root)
    raise DataError(
        f"data card '{text}' not found: it is neither a packaged card "
        f"({', '.join(card_names())}), a YAML file, nor an ImageFolder directory"
    )


def _from_yaml(text: str, where: str, card_dir: Path | None, root) -> Card:
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        raise DataError(f"{where}: invalid YAML: {yaml_problem(e)}") from e
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a data card must be a YAML mapping of keys ({', '.join(KEYS)})")
    root_path = _check_root(root)
    return Card(_validate(raw, where, card_dir, root_path), root_path, where)


def _check_root(root) -> Path | None:
    if root is None:
        return None
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data root {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data root {path} is not a directory")
    return path.resolve()


def _infer(directory: Path, root) -> Card:
    directory = directory.resolve()
    if root is not None and _check_root(root) != directory:
        raise DataError(
            f"--card is the directory {directory}, which is its own root; --root "
            f"{root} points elsewhere (drop --root, or pass a card name or YAML file)"
        )
    splits = {s: s for s in DEFAULT_SPLITS if (directory / s).is_dir()}
    if not splits:
        raise DataError(
            f"{directory} is not an ImageFolder directory: expected sub-directories "
            f"train/<class>/ and val/<class>/ (or a packaged card name or YAML file)"
        )
    raw = {
        "name": directory.name or "imagefolder",
        "kind": "imagefolder",
        "description": "Inferred from an ImageFolder directory: classes are the sorted "
        "sub-directories of the first split.",
        "licence": "unknown (inferred card)",
        "splits": splits,
        "classes": "infer",
    }
    where = f"inferred card for {directory}"
    return Card(_validate(raw, where, None, directory), directory, where)


# --- validation ------------------------------------------------------------------------------


def _validate(raw: dict, where: str, card_dir: Path | None, root: Path | None) -> dict:
    """The resolved card: every key present, classes a list, counts filled in where known."""
    for key in raw:
        if key not in KEYS:
            raise DataError(f"{where}: unknown key '{key}' (known: {', '.join(KEYS)})")
    for key in ("name", "kind"):
        if key not in raw:
            raise DataError(f"{where}: missing required key '{key}'")
    card: dict[str, Any] = {"name": _string(raw, "name", where, required=True), "kind": raw["kind"]}
    if card["kind"] not in KINDS:
        raise DataError(
            f"{where}: key 'kind' must be one of {', '.join(KINDS)}, got {raw['kind']!r}"
        )
    card["description"] = _string(raw, "description", where)
    card["licence"] = _string(raw, "licence", where)
    card["preprocessing"] = _preprocessing(raw.get("preprocessing", ""), where)
    card["splits"] = _splits(raw.get("splits", DEFAULT_SPLITS), where)
    if card["kind"] == "synthetic":
        _synthetic_fields(raw, card, where)
    else:
        _imagefolder_fields(raw, card, where, card_dir, root)
    card["class_names"] = _class_names(raw.get("class_names"), card["classes"], where)
    return card


def _string(raw: dict, key: str, where: str, required: bool = False) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(
            f"{where}: key '{key}' must be a {'non-empty ' if required else ''}"
            f"string, got {value!r}"
        )
    return value


def _preprocessing(value: Any, where: str) -> str | dict:
    if not isinstance(value, (str, dict)):
        raise DataError(f"{where}: key 'preprocessing' must be text or a mapping, got {value!r}")
    return value


def _splits(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise DataError(
            f"{where}: key 'splits' must be a non-empty mapping split -> "
            f"sub-directory, got {value!r}"
        )
    for split, sub in value.items():
        if not isinstance(split, str) or not split:
            raise DataError(f"{where}: key 'splits' has a bad split name {split!r}")
        if (
            not isinstance(sub, str)
            or not sub
            or Path(sub).is_absolute()
            or ".." in Path(sub).parts
        ):
            raise DataError(
                f"{where}: key 'splits.{split}' must be a sub-directory of --root "
                f"(relative, no '..'), got {sub!r}"
            )
    return dict(value)


def _counts(value: Any, splits: dict, where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: key 'expected_counts' must be a mapping split -> count")
    for split, n in value.items():
        if split not in splits:
            raise DataError(
                f"{where}: key 'expected_counts.{split}' names no split "
                f"(splits: {', '.join(splits)})"
            )
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DataError(
                f"{where}: key 'expected_counts.{split}' must be an integer >= 0, got {n!r}"
            )
    return dict(value)


def _synthetic_fields(raw: dict, card: dict, where: str) -> None:
    for key in ("extensions",):
        if key in raw:
            raise DataError(f"{where}: key '{key}' applies to imagefolder cards only")
    if "synthetic" not in raw:
        raise DataError(
            f"{where}: a synthetic card needs the key 'synthetic' "
            f"({', '.join(synthetic.SPEC_KEYS)})"
        )
    spec = synthetic.validate_spec(raw["synthetic"], f"{where}: key 'synthetic'")
    for split in card["splits"]:
        if split not in synthetic.SPLITS:
            raise DataError(
                f"{where}: key 'splits.{split}': synthetic splits are {', '.join(synthetic.SPLITS)}"
            )
    classes = raw.get("classes", list(synthetic.CLASSES))
    if classes != list(synthetic.CLASSES):
        raise DataError(
            f"{where}: key 'classes' of a synthetic card must be omitted or "
            f"{list(synthetic.CLASSES)}, got {classes!r}"
        )
    if synthetic.CUE_CONFLICT in card["splits"] and not spec.get("n_cue_conflict_per_pair"):
        raise DataError(
            f"{where}: split '{synthetic.CUE_CONFLICT}' needs the synthetic key "
            f"'n_cue_conflict_per_pair' > 0"
        )
    actual = {s: synthetic.split_size(spec, s) for s in card["splits"]}
    expected = _counts(raw.get("expected_counts", actual), card["splits"], where)
    for split, n in expected.items():
        if n != actual[split]:
            raise DataError(
                f"{where}: key 'expected_counts.{split}' is {n} but the synthetic "
                f"spec makes {actual[split]} images"
            )
    card.update(synthetic=spec, classes=list(synthetic.CLASSES), expected_counts=actual)


def _imagefolder_fields(
    raw: dict, card: dict, where: str, card_dir: Path | None, root: Path | None
) -> None:
    if "synthetic" in raw:
        raise DataError(f"{where}: key 'synthetic' applies to synthetic cards only")
    if "classes" not in raw:
        raise DataError(
            f"{where}: missing required key 'classes' (a list, {{file: NAME}} or 'infer')"
        )
    card["classes"] = _classes(raw["classes"], where, card_dir, root, card["splits"])
    card["expected_counts"] = _counts(raw.get("expected_counts", {}), card["splits"], where)
    exts = raw.get("extensions", list(DEFAULT_EXTENSIONS))
    if (
        not isinstance(exts, list)
        or not exts
        or not all(isinstance(e, str) and e.strip(".") for e in exts)
    ):
        raise DataError(
            f"{where}: key 'extensions' must be a non-empty list of file extensions, got {exts!r}"
        )
    card["extensions"] = sorted({e.lower().lstrip(".") for e in exts})


def _classes(
    value: Any, where: str, card_dir: Path | None, root: Path | None, splits: dict[str, str]
) -> list[str]:
    if value == "infer":
        if root is None:
            raise DataError(f"{where}: classes are inferred from the data; give --root DIR")
        first = root / next(iter(splits.values()))
        if not first.is_dir():
            raise DataError(
                f"{where}: cannot infer classes: split directory {first} does not exist"
            )
        classes = sorted(
            p.name for p in first.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not classes:
            raise DataError(f"{where}: cannot infer classes: {first} has no class sub-directories")
    elif isinstance(value, dict):
        if set(value) != {"file"} or not isinstance(value["file"], str):
            raise DataError(
                f"{where}: key 'classes' as a mapping must be {{file: NAME}}, got {value!r}"
            )
        classes = _read_class_file(value["file"], where, card_dir)
    elif isinstance(value, list):
        classes = value
    else:
        raise DataError(
            f"{where}: key 'classes' must be a list, {{file: NAME}} or 'infer', got {value!r}"
        )
    bad = [c for c in classes if not isinstance(c, str) or not c or "/" in c or c in (".", "..")]
    if bad or not classes:
        raise DataError(
            f"{where}: key 'classes' must list folder names, got "
            f"{bad[:3] if bad else 'an empty list'}"
        )
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise DataError(f"{where}: key 'classes' repeats {', '.join(duplicates[:5])}")
    return list(classes)


def _read_class_file(name: str, where: str, card_dir: Path | None) -> list[str]:
    packaged = resources.files("daat.data") / name
    if "/" not in name and os.sep not in name and packaged.is_file():
        text = packaged.read_text()
    elif card_dir is not None and (card_dir / name).is_file():
        text = (card_dir / name).read_text()
    else:
        raise DataError(
            f"{where}: key 'classes.file': class list '{name}' not found in "
            f"daat/data/ or beside the card"
        )
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def _class_names(value: Any, classes: list[str], where: str) -> dict[str, str]:
    if value is None:
        return {c: c for c in classes}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DataError(f"{where}: key 'class_names' must map class -> display name")
    unknown = [k for k in value if k not in classes]
    if unknown:
        raise DataError(
            f"{where}: key 'class_names' names unknown classes: {', '.join(map(str, unknown[:5]))}"
        )
    return {c: value.get(c, c) for c in classes}


# --- the card --------------------------------------------------------------------------------


class Card:
    """A validated, resolved data card plus the root its images live under."""

    def __init__(self, resolved: dict, root: Path | None, source: str):
        self._card = resolved
        self.source = source  # where the card came from (for messages; not part of to_dict)
        self.name: str = resolved["name"]
        self.kind: str = resolved["kind"]
        self.classes: list[str] = list(resolved["classes"])
        self.class_names: list[str] = [resolved["class_names"][c] for c in self.classes]
        self.splits: dict[str, str] = dict(resolved["splits"])
        self.expected_counts: dict[str, int] = dict(resolved["expected_counts"])
        self.synthetic: dict | None = resolved.get("synthetic")
        self.extensions: list[str] = list(resolved.get("extensions", []))
        if self.kind == "synthetic" and root is not None:
            _warn(f"{source}: --root {root} is ignored: synthetic images are rendered, not read")
            root = None
        self.root: Path | None = root

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"Card({self.name!r}, kind={self.kind!r}, classes={self.num_classes}, root={self.root})"
        )

    def splits_to_write(self, requested: list[str]) -> list[str]:
        """The ``requested`` splits, then any the card adds: the cue-conflict split of a synthetic
        card that lists it (evaluation-only data, never trained on)."""
        return list(requested) + [
            s for s in self.splits if s == synthetic.CUE_CONFLICT and s not in requested
        ]

    def to_dict(self) -> dict:
        """The full resolved card (a valid card itself); no machine paths, so it can be hashed."""
        return json.loads(json.dumps(self._card))

    def items(self, split: str) -> list[SourceItem]:
        """The split's inputs, sorted by class then path; ``index`` is the position in this list."""
        self._check_split(split)
        if self.kind == "synthetic":
            return [
                SourceItem(it.index, it.label, f"synthetic/{split}/{it.index:06d}", None, it)
                for it in synthetic.items(self.synthetic, split)
            ]
        listing = self._scan(split)
        for message in listing.warnings:
            _warn(message)
        out = [
            SourceItem(i, label, rel, self.root / rel, None)
            for i, (label, rel) in enumerate(listing.files)
        ]
        expected = self.expected_counts.get(split)
        if expected is not None and expected != len(out):
            _warn(
                f"data card '{self.name}': split '{split}' under {self.root} has {len(out)} "
                f"images but the card expects {expected}"
            )
        return out

    def skipped(self, split: str) -> list[dict]:
        """Every entry under the split's folder that ``items`` does not read, with the reason:
        ``{"relpath", "reason"}`` (reason codes: hidden, outside-root, not-a-class,
        not-an-image-name, symlink-loop). Synthetic cards skip nothing."""
        self._check_split(split)
        return [] if self.kind == "synthetic" else list(self._scan(split).skipped)

    def input_fingerprint(self, split: str) -> str:
        """sha256 that changes when the split's inputs change: (label, relpath, size) of every
        listed file; for synthetic data the spec and the renderer version."""
        self._check_split(split)
        digest = hashlib.sha256()
        if self.kind == "synthetic":
            blob = {
                "kind": "synthetic",
                "split": split,
                "spec": self.synthetic,
                "render_version": synthetic.RENDER_VERSION,
            }
            digest.update(json.dumps(blob, sort_keys=True).encode())
            return digest.hexdigest()
        digest.update(b"daat-imagefolder-v1\n")
        for label, rel in self._scan(split).files:
            try:
                size = (self.root / rel).stat().st_size
            except OSError:
                size = -1  # vanished or unreadable since listing: preprocess records it as bad
            digest.update(f"{label}\t{rel}\t{size}\n".encode())
        return digest.hexdigest()

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(
                f"data card '{self.name}' has no split '{split}' (splits: {', '.join(self.splits)})"
            )

    def _scan(self, split: str) -> _Listing:
        """The split's image files by class and every entry left out, as the disk is now."""
        if self.root is None:
            raise DataError(
                f"data card '{self.name}' describes images on disk: give --root DIR "
                f"(the directory holding {', '.join(self.splits.values())}/)"
            )
        split_dir = self.root / self.splits[split]
        if not split_dir.is_dir():
            raise DataError(
                f"data card '{self.name}': split directory {split_dir} "
                f"(split '{split}') does not exist"
            )
        classes = set(self.classes)
        skipped = [
            {"relpath": _rel(Path(e.path), self.root), "reason": _not_a_class(e)}
            for e in _entries(split_dir)
            if e.name not in classes
        ]
        exts = set(self.extensions)
        files: list[tuple[int, str]] = []
        warnings_: list[str] = []
        for label, cls in enumerate(self.classes):
            class_dir = split_dir / cls
            if not class_dir.is_dir():
                raise DataError(
                    f"data card '{self.name}': class folder {class_dir} (class "
                    f"'{cls}', split '{split}') is missing"
                )
            outside = _outside_root(class_dir, self.root)
            if outside:
                skipped.append({"relpath": _rel(class_dir, self.root), "reason": outside})
                found: list[str] = []
            else:
                found, left_out = _walk(class_dir, self.root, exts)
                skipped += left_out
            if not found:
                warnings_.append(
                    f"data card '{self.name}': class folder {class_dir} has no "
                    f"images ({', '.join(self.extensions)})"
                    + (" (a symlink outside --root, skipped)" if outside else "")
                )
            files.extend((label, rel) for rel in found)
        return _Listing(files, sorted(skipped, key=lambda x: x["relpath"]), warnings_)


@dataclass(frozen=True)
class _Listing:
    files: list[tuple[int, str]]  # (label, relpath under --root), by class then path
    skipped: list[dict]  # {"relpath", "reason"} of every entry not read
    warnings: list[str]  # empty class folders


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
