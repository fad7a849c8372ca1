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

import yaml

from daat import synthetic
from daat.card_schema import DEFAULT_SPLITS, KEYS, validate
from daat.errors import DataError
from daat.imagefolder import Listing, scan_split
from daat.strict_yaml import load_yaml, yaml_problem

log = logging.getLogger(__name__)


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
    return Card(validate(raw, where, card_dir, root_path), root_path, where)


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
    return Card(validate(raw, where, None, directory), directory, where)


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

    def _scan(self, split: str) -> Listing:
        """The split's image files by class and every entry left out, as the disk is now."""
        if self.root is None:
            raise DataError(
                f"data card '{self.name}' describes images on disk: give --root DIR "
                f"(the directory holding {', '.join(self.splits.values())}/)"
            )
        return scan_split(
            self.name, self.root, split, self.splits[split], self.classes, self.extensions
        )
