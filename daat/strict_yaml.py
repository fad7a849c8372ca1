"""YAML as daat reads it (configs, presets, data cards): ``yaml.safe_load`` that refuses a
repeated key, which PyYAML would otherwise resolve silently by keeping the last value."""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping repeats a key (PyYAML would silently keep the last value)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            marker = repr(key)
            line = key_node.start_mark.line + 1
            if marker in seen:
                raise DuplicateKeyError(
                    f"key {key!r} appears twice (lines {seen[marker]} and {line}); keep one"
                )
            seen[marker] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses repeated keys (``DuplicateKeyError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line."""
    return " ".join(str(error).split())
