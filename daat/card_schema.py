"""A data card's schema: the raw YAML mapping checked key by key and resolved (every key
present, classes a list, counts filled in where known). The schema itself is in the docstring of
``daat/cards.py``; every error names the card and the key."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from daat import synthetic
from daat.errors import DataError

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


def validate(raw: dict, where: str, card_dir: Path | None, root: Path | None) -> dict:
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
