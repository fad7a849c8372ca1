"""The one config system: nested dataclasses, YAML presets, typed ``--set a.b=v`` overrides.

Every stage reads the same ``Config``; each artifact's content key hashes only the keys that
determine it (the tables in ``daat/keys.py``), so e.g. changing ``train.epochs`` never invalidates
shards.

The sections, their fields and their checks live in ``daat/config_sections.py``; this module reads
them: defaults, then presets/files, then ``--set`` (``load``), typed by each field's annotation
(choices are ``Literal`` types, every number must be finite); saved configs of older versions are
upgraded (``from_dict``); and it prints them (``dump`` exact, ``show`` for people). ε and α fields
are ``PixelFraction``: written ``0.0157`` or ``4/255`` (in YAML files and ``--set`` alike); a
value above 1 is refused with the fraction to write instead. YAML files may not repeat a key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from daat.config_sections import (
    AttackConfig,
    Config,
    ConfigError,
    DataConfig,
    DepthConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PixelFraction,
    PixelFractionMark,
    TrainConfig,
)
from daat.strict_yaml import DuplicateKeyError, load_yaml, yaml_problem

__all__ = [
    "AttackConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DepthConfig",
    "DuplicateKeyError",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PixelFraction",
    "TrainConfig",
    "apply_override",
    "dump",
    "fraction_text",
    "fraction_value",
    "from_dict",
    "load",
    "load_yaml",
    "parse_value",
    "preset_names",
    "print_resolved",
    "read_yaml",
    "show",
    "to_dict",
    "upgrade_saved",
    "validate",
    "yaml_problem",
]


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, cls: type = Config, where: str = "") -> Any:
    """Build a dataclass from a (partial) dict, rejecting unknown keys and bad types by name. A
    whole config saved by an older daat (in a run, checkpoint or eval artifact) is upgraded
    first (``upgrade_saved``)."""
    if cls is Config and isinstance(data, dict):
        data = upgrade_saved(data)
    return _merge(cls(), data, where)


_EVAL_RADII = ("eps", "alpha", "eps_grid", "figure_eps")


def upgrade_saved(data: dict) -> dict:
    """A saved config as this version reads it. Older versions counted eval radii in 1/255 (any
    radius above 1 gives them away: a fraction never is) and had no model.init_values (the
    architecture's own LayerScale then applied)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    ev = data.get("eval")
    if isinstance(ev, dict):
        radii = [
            r
            for key in _EVAL_RADII
            if key in ev
            for r in (ev[key] if isinstance(ev[key], list) else [ev[key]])
        ]
        if any(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 1 for r in radii):
            for key in (k for k in _EVAL_RADII if k in ev):
                value = ev[key]
                ev[key] = [r / 255 for r in value] if isinstance(value, list) else value / 255
    model = data.get("model")
    if isinstance(model, dict) and "init_values" not in model and "name" in model:
        model["init_values"] = _architecture_layerscale(str(model["name"]))
    return data


def _architecture_layerscale(name: str) -> float | None:
    """1e-5 (DINOv2's init; the weights come from the checkpoint anyway) when timm's ``name``
    has LayerScale by default, else None."""
    import timm
    import torch

    if not timm.is_model(name):
        return None
    with torch.device("meta"):
        vit = timm.create_model(name, pretrained=False)
    blocks = getattr(vit, "blocks", [])
    has = bool(len(blocks)) and type(getattr(blocks[0], "ls1", None)).__name__ == "LayerScale"
    return 1e-5 if has else None


def _merge(obj: Any, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))
    return obj


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        number = _coerce(value, args[0], path)
        if PixelFractionMark in args[1:]:
            _check_fraction(number, path)
        return number
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"config key '{path}' must be one of {', '.join(map(str, args))}; got {value!r}"
        )
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}' expects a list, got {value!r}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{path}' expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{path}' expects an integer, got {value!r}")
    if hint is float:
        return _number(value, path)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{path}' expects a string, got {value!r}")
    raise ConfigError(f"config key '{path}': unsupported type {hint}")


_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_FRACTION_TEXT = re.compile(rf"^\s*({_NUMBER})\s*/\s*({_NUMBER})\s*$")
_SHOWN_TEXT = re.compile(rf"^\s*{_NUMBER}\s*\(\s*({_NUMBER}\s*/\s*{_NUMBER})\s*\)\s*$")


def _number(value: Any, path: str) -> float:
    """A finite float from a number or from text: '1e-3', '4/255', or '0.0157 (4/255)' (what
    ``show`` prints; the fraction in brackets is the exact value)."""
    if isinstance(value, bool):
        raise ConfigError(f"config key '{path}' expects a number, got {value!r}")
    if isinstance(value, str):
        text = value
        shown = _SHOWN_TEXT.match(text)
        if shown:
            text = shown.group(1)
        ratio = _FRACTION_TEXT.match(text)
        try:
            if ratio:
                value = float(ratio.group(1)) / float(ratio.group(2))
            else:
                value = float(text)  # YAML 1.1 reads '1e-3' (no dot) as a string
        except (ValueError, ZeroDivisionError) as e:
            raise ConfigError(f"config key '{path}' expects a number, got {text!r}") from e
    if not isinstance(value, (int, float)):
        raise ConfigError(f"config key '{path}' expects a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"config key '{path}' must be a finite number, got {value!r}")
    return float(value)


def _check_fraction(value: float, path: str) -> None:
    if value > 1:
        raise ConfigError(
            f"config key '{path}' = {value:g} is above 1: ε and α are fractions of the [0, 1] "
            f"pixel range, so write {value:g}/255 for {value:g} grey levels"
        )
    if value < 0:
        raise ConfigError(f"config key '{path}' must be in [0, 1], got {value:g}")


def fraction_text(value: float) -> str:
    """'4/255' when ``value`` is a multiple of 1/255 (or of a quarter of it: '0.75/255'), else
    the number itself."""
    quarters = value * 255 * 4
    if abs(quarters - round(quarters)) < 1e-6:
        return f"{round(quarters) / 4:g}/255"
    return f"{value:g}"


def fraction_value(text: str) -> float:
    """The number ``fraction_text`` wrote."""
    return _number(text, "fraction")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set`` as YAML (fractions like ``4/255`` stay text until
    the field's type reads them)."""
    stripped = text.strip()
    return yaml.safe_load(stripped) if stripped else ""


def apply_override(cfg: Config, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    key, _, text = assignment.partition("=")
    parts = key.strip().split(".")
    nested: dict = {}
    cursor = nested
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = parse_value(text)
    _merge(cfg, nested, "")


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("daat.configs").iterdir() if p.name.endswith(".yaml")
    )


def read_yaml(source: str) -> dict:
    """A preset name (``daat/configs/NAME.yaml``) or a YAML file path."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file not found: {source}")
        text = path.read_text()
    else:
        preset = resources.files("daat.configs") / f"{source}.yaml"
        if not preset.is_file():
            raise ConfigError(f"unknown preset '{source}' (presets: {', '.join(preset_names())})")
        text = preset.read_text()
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {yaml_problem(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    return data


def load(
    configs: typing.Sequence[str] = (),
    overrides: typing.Sequence[str] = (),
    base: dict | None = None,
) -> Config:
    """Defaults (or ``base``, e.g. a run's saved config), then each preset/file in order (later
    wins), then each ``--set`` in order; then every section checks itself."""
    cfg = from_dict(base) if base is not None else Config()
    applied = [cfg.preset] if cfg.preset else []
    for source in configs:
        data = read_yaml(source)
        try:
            _merge(cfg, data, "")
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from e
        applied.append(Path(source).stem if Path(source).suffix else source)
    if applied and not any(o.strip().startswith("preset=") for o in overrides):
        cfg.preset = "+".join(applied)
    for assignment in overrides:
        apply_override(cfg, assignment)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every section's own checks (ranges, cross-field rules); choices, types and finiteness are
    checked while values are read."""
    cfg.check()


def dump(cfg: Config) -> str:
    """The config as YAML with exact numbers (what artifacts save)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


class _Shown(str):
    """An ε/α value as ``show`` prints it: '0.0157 (4/255)'."""


class _ShowDumper(yaml.SafeDumper):
    pass


_ShowDumper.add_representer(
    _Shown,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style=""),
)


def _shown(value: float) -> _Shown | float:
    text = fraction_text(value)
    return _Shown(f"{value:.3g} ({text})") if "/" in text else value


def _for_show(obj: Any) -> Any:
    hints = typing.get_type_hints(type(obj), include_extras=True)
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(value):
            out[f.name] = _for_show(value)
        elif hint == PixelFraction:
            out[f.name] = _shown(value)
        elif typing.get_args(hint) and typing.get_args(hint)[0] == PixelFraction:
            out[f.name] = [_shown(v) for v in value]
        else:
            out[f.name] = value
    return out


def show(cfg: Config) -> str:
    """The config as YAML for people: ε/α fields read '0.0157 (4/255)' (``load`` accepts that
    text back; the fraction is the exact value)."""
    return yaml.dump(_for_show(cfg), Dumper=_ShowDumper, sort_keys=False, allow_unicode=True)


def print_resolved(cfg: Config, label: str) -> None:
    """The resolved config on stderr, as every command prints it before it works."""
    import sys

    sys.stderr.write(f"# resolved config ({label})\n{show(cfg)}")
    sys.stderr.flush()
