"""Scales: the model size, data and recipes a study runs at, and the map from paper labels to them.

A study names its axes in the paper's values (decoder width 512, 800 epochs); a scale file says what
those mean at its size (`maps`: dotted key -> {paper label: scale value}) and gives the base config
in scale values. Runs keep the paper label (the inverse map), so one table query serves every scale.
A label mapped to `null` has no counterpart at that scale: its runs are planned as unavailable.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from mae.config import validate_config
from mae.overrides import flatten_dict
from mae.paths import project_root
from mae.schema import ConfigError, YamlFile, load_model, resolve_named


def scales_dir() -> Path:
    return project_root() / "studies" / "scales"


def available_scales() -> list[str]:
    return sorted(p.stem for p in scales_dir().glob("*.yaml"))


@cache
def config_leaves() -> frozenset[str]:
    """Every dotted key an ExperimentConfig has: what a map or an axis may name."""
    return frozenset(flatten_dict(validate_config({}).model_dump(mode="json")))


def label_str(value: Any) -> str:
    """The text form of a paper label (MLflow param `label.<key>`): 0.75, True, 512, pixel.

    Whole floats print as integers so that `partial.blocks` reads 24 at every scale, whether the
    value came from a YAML key (int) or from the float config field.
    """
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Scale(YamlFile):
    """One `studies/scales/<name>.yaml`: base config (scale values) and paper-label maps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    config: dict[str, Any] = {}
    maps: dict[str, dict[Any, Any]] = {}

    def lookup(self, key: str, label: Any) -> tuple[bool, Any]:
        """(available, scale value) of a paper label; labels outside the map pass through."""
        mapping = self.maps.get(key)
        if not isinstance(label, Hashable) or isinstance(label, bool):
            return True, label
        if mapping is None or label not in mapping:
            return True, label
        value = mapping[label]
        return value is not None, value

    def label(self, key: str, value: Any) -> Any:
        """The paper label of a scale value: the inverse map, else the value itself."""
        for label, mapped in self.maps.get(key, {}).items():
            if mapped is not None and mapped == value and not isinstance(value, bool):
                return label
        return value


def _unknown_scale(name: str) -> ConfigError:
    return ConfigError("--scale", "scale", name, "allowed: " + " | ".join(available_scales()))


def load_scale(name_or_path: str | Path) -> Scale:
    """Load and check a scale: a bare name resolves to `studies/scales/<name>.yaml`."""
    path = resolve_named(name_or_path, scales_dir(), "scale", _unknown_scale)
    scale = load_model(path, Scale, "a scale file is a mapping with name, config, maps")
    _check(scale)
    return scale


def _check(scale: Scale) -> None:
    """The base config validates; maps name real keys, are injective and cover the baseline."""
    source = scale.source
    try:
        base = validate_config(scale.config, source)
    except ConfigError as exc:
        raise ConfigError(source, f"config.{exc.key}", exc.value, exc.allowed) from None
    flat_base = flatten_dict(base.model_dump(mode="json"))
    for key, mapping in scale.maps.items():
        where = f"maps.{key}"
        if key not in config_leaves():
            raise ConfigError(source, where, key, "a dotted config key such as decoder.width")
        values = [v for v in mapping.values() if v is not None]
        if len(values) != len(set(values)):
            raise ConfigError(
                source, where, mapping, "scale values must be distinct: one paper label per run"
            )
        if flat_base[key] not in values:
            raise ConfigError(
                source,
                where,
                mapping,
                f"the base config's {key}={flat_base[key]!r} must be a mapped value, so that the "
                "baseline carries a paper label",
            )
