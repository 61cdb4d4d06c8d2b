"""Dotted overrides of nested config trees: `--set masking.ratio=0.9`, a study's sweep axes and a
scale's sections are all applied as `a.b.c` keys onto plain dicts, before validation."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

from mae.schema import ConfigError


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars: 0.75, true, null, [1, 2], pixel."""
    return yaml.safe_load(text) if text.strip() else ""


def parse_override(text: str) -> tuple[str, Any]:
    """'masking.ratio=0.9' -> ('masking.ratio', 0.9)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, text, "expected KEY=VALUE, e.g. masking.ratio=0.9")
    return key.strip(), parse_value(value)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict in place, creating sections as needed."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError("<overrides>", key, value, f"{part!r} is a value, not a section")
        node = child
    node[leaf] = value


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of `base` with dotted (or nested) overrides applied, later wins."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and "." not in key:
            for sub, subval in flatten_dict(value, prefix=key).items():
                set_dotted(out, sub, subval)
        else:
            set_dotted(out, key, value)
    return out


def flatten_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_dict(value, dotted))
        else:
            out[dotted] = value
    return out
