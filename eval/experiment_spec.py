"""The experiment spec: the YAML file ``daat experiment`` reads, checked key by key into a frozen
``Spec`` (paths in it are relative to the spec file). What the spec makes, and how, is
``experiment.py``'s.

A spec (YAML; paths in it are relative to the spec file)::

    name: table1-synthetic            # a label for the report
    cards: [synthetic]                # data card(s): names or YAML paths
    depth: oracle                     # depth model of `daat preprocess`
    scale: [synthetic]                # scale preset(s), applied after each method preset
    methods: [standard, pgd-at, daat-no-align, daat]
    seeds: [0, 1, 2]
    grid: {loss.lam: [0, 0.05, 0.1]}  # optional config axes (cartesian product) ...
    grid_methods: [daat]              # ... applied to these methods (default: all)
    set: {train.epochs: 10}           # optional config for every run, after the presets
    evaluate: {eval.n_autoattack: 100}  # optional `daat evaluate` settings
    baseline: pgd-at                  # paired differences are taken against this method
    bootstrap: {replicates: 2000, seed: 0}
    launcher: daat                    # how --print-commands starts daat, e.g.
                                      # "torchrun --nproc_per_node 8 -m daat.cli"
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from daat.errors import DaatError

KEYS = (
    "name",
    "cards",
    "depth",
    "scale",
    "methods",
    "seeds",
    "grid",
    "grid_methods",
    "set",
    "evaluate",
    "baseline",
    "bootstrap",
    "launcher",
)


class SpecError(DaatError):
    """An experiment spec is wrong; the message names the file and key."""


@dataclass(frozen=True)
class Spec:
    path: Path  # absolute
    name: str
    cards: tuple[str, ...]
    depth: str
    scale: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    grid: tuple[tuple[str, tuple], ...]  # (config key, values), in spec order
    grid_methods: tuple[str, ...]
    settings: tuple[tuple[str, Any], ...]  # the spec's ``set``
    evaluate: tuple[tuple[str, Any], ...]
    baseline: str
    replicates: int = 2000
    bootstrap_seed: int = 0
    launcher: str = "daat"

    def determining(self) -> dict:
        """What the experiment artifact's key hashes (everything but the spec's location and
        launcher, which change how, not what, is run)."""
        return {
            "name": self.name,
            "cards": list(self.cards),
            "depth": self.depth,
            "scale": list(self.scale),
            "methods": list(self.methods),
            "seeds": list(self.seeds),
            "grid": [[k, list(v)] for k, v in self.grid],
            "grid_methods": list(self.grid_methods),
            "set": [list(s) for s in self.settings],
            "evaluate": [list(s) for s in self.evaluate],
            "baseline": self.baseline,
            "bootstrap": {"replicates": self.replicates, "seed": self.bootstrap_seed},
        }


def _as_list(value, key: str, where: str) -> list:
    value = value if isinstance(value, list) else [value]
    if not value:
        raise SpecError(f"{where}: key '{key}' must not be empty")
    return value


def _optional_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _flat_mapping(value, key: str, where: str) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SpecError(
            f"{where}: key '{key}' must map config keys (like train.epochs) to "
            f"values, got {value!r}"
        )
    return tuple(value.items())


def _local(value: str, base: Path) -> str:
    """A preset/card name stays as it is; a path is taken relative to the spec's directory."""
    candidate = base / value
    looks_like_file = value.endswith((".yaml", ".yml")) or "/" in value
    return str(candidate.resolve()) if looks_like_file and candidate.exists() else value


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and check a spec; every cell's config is loaded by ``plan`` (bad keys fail there)."""
    path = Path(path).resolve()
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"cannot read experiment spec {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise SpecError(f"{where}: invalid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: an experiment spec is a mapping of {', '.join(KEYS)}")
    unknown = [k for k in raw if k not in KEYS]
    if unknown:
        raise SpecError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(KEYS)})")
    for key in ("cards", "methods", "seeds"):
        if key not in raw:
            raise SpecError(f"{where}: missing key '{key}'")
    base = path.parent
    seeds = _as_list(raw["seeds"], "seeds", where)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SpecError(f"{where}: key 'seeds' must list integers, got {seeds!r}")
    methods = tuple(_local(str(m), base) for m in _as_list(raw["methods"], "methods", where))
    grid = _flat_mapping(raw.get("grid"), "grid", where)
    for key, values in grid:
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: grid axis '{key}' must list its values")
    grid_methods = tuple(_local(str(m), base) for m in raw.get("grid_methods") or methods)
    baseline = _local(str(raw.get("baseline", "pgd-at")), base)
    for key, names in (("grid_methods", grid_methods), ("baseline", (baseline,))):
        missing = [m for m in names if m not in methods]
        if missing:
            raise SpecError(
                f"{where}: key '{key}' names '{missing[0]}', which is not among "
                f"the methods {list(methods)}"
            )
    boot = raw.get("bootstrap") or {}
    if not isinstance(boot, dict) or set(boot) - {"replicates", "seed"}:
        raise SpecError(f"{where}: key 'bootstrap' takes replicates and seed, got {boot!r}")
    return Spec(
        path,
        str(raw.get("name") or path.stem),
        tuple(_local(str(c), base) for c in _as_list(raw["cards"], "cards", where)),
        str(raw.get("depth", "oracle")),
        tuple(_local(str(s), base) for s in _optional_list(raw.get("scale"))),
        methods,
        tuple(seeds),
        tuple((k, tuple(v)) for k, v in grid),
        grid_methods,
        _flat_mapping(raw.get("set"), "set", where),
        _flat_mapping(raw.get("evaluate"), "evaluate", where),
        baseline,
        int(boot.get("replicates", 2000)),
        int(boot.get("seed", 0)),
        str(raw.get("launcher", "daat")),
    )


def override(key: str, value: Any) -> str:
    """``key=value`` for ``config.load`` (JSON is YAML, so the value parses back unchanged)."""
    return f"{key}={json.dumps(value)}"
