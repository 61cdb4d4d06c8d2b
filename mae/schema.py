"""Typed YAML: the one way a file (a study, a scale, a cluster profile) or a config tree becomes a
validated pydantic model, and the one translation of a validation failure into a single line:

    <file>: <dotted.key>: got <value>; <what is allowed>

Models derive from `Schema`, which forbids unknown keys and says what a place accepts;
validators raise `Problem` when they know the exact key at fault (a list index, a nested key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError


class ConfigError(ValueError):
    """A bad value in one line: where, which dotted key, what value, what is allowed."""

    def __init__(self, source: str, key: str, value: Any, allowed: str):
        self.source, self.key, self.value, self.allowed = source, key, value, allowed
        super().__init__(f"{source}: {key}: got {value!r}; {allowed}")


class Problem(ValueError):
    """Raised inside validators: carries the exact dotted key, later given its file."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}: got {value!r}; {allowed}")


class Schema(BaseModel):
    """A model read from YAML: unknown keys are errors, and error lines say what is allowed."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def unknown_key_hint(cls) -> str:
        return "unknown key; allowed keys here: " + ", ".join(sorted(cls.model_fields))

    @classmethod
    def expected(cls, field: str) -> str:
        """What a top-level field expects, appended to pydantic's message ('' for nothing)."""
        return ""


class YamlFile(Schema):
    """A model loaded from a file, which it remembers for error lines raised later."""

    _source: str = PrivateAttr("<file>")

    @property
    def source(self) -> str:
        return self._source


Model = TypeVar("Model", bound=YamlFile)


# --------------------------------------------------------------------------- error lines


def located(loc: tuple[Any, ...]) -> str:
    """('cases', 1, 'masking.ratio') -> 'cases[1].masking.ratio'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    """The raw value at `loc`, or '<missing>'."""
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return data


def _inner(annotation: Any) -> Any:
    """The model (or container) inside an Optional annotation."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) not in (dict, list, tuple, Literal) and len(args) == 1:
        return args[0]
    return annotation


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, Any]:
    """(the model or annotation reached along `loc`, the last field passed on the way)."""
    node: Any = root
    field = None
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return node, None
            node = _inner(field.annotation)
        elif get_origin(node) is dict:  # a mapping key: continue with its values' type
            node = _inner(get_args(node)[1])
        elif get_origin(node) is list:
            node = _inner(get_args(node)[0])
        else:
            break
    return node, field


def _allowed(root: type[Schema], loc: tuple[Any, ...], msg: str) -> str:
    """What the place `loc` accepts: a Literal's values, a field's bounds, the root's hint."""
    node, field = _walk(root, loc)
    if field is None:  # the whole model is at fault (a model validator), or an unknown key
        known = isinstance(node, type) and issubclass(node, Schema)
        return node.unknown_key_hint() if loc and known else msg
    hint = msg
    choices = get_args(field.annotation)
    if get_origin(field.annotation) is Literal and choices:
        hint = "allowed: " + " | ".join(map(str, choices))
    bounds = [
        f"{name} {getattr(m, name)}"
        for m in field.metadata
        for name in ("ge", "gt", "le", "lt")
        if getattr(m, name, None) is not None
    ]
    if bounds:
        hint = f"{msg} (allowed: {', '.join(bounds)})"
    expected = root.expected(str(loc[0])) if loc else ""
    return f"{hint}; expected {expected}" if expected else hint


def schema_error(exc: ValidationError, data: Any, source: str, root: type[Schema]) -> ConfigError:
    """The first error of validating `data` as `root`, as one ConfigError line."""
    err = exc.errors()[0]
    problem = (err.get("ctx") or {}).get("error")
    if isinstance(problem, Problem):
        return ConfigError(source, problem.key, problem.value, problem.allowed)
    raw = tuple(err["loc"])
    loc = tuple(p for p in raw if p != "[key]" and not str(p).startswith("function-"))
    value = loc[-1] if "[key]" in raw else lookup(data, loc)
    if err["type"] == "extra_forbidden":
        parent, _ = _walk(root, loc[:-1])
        allowed = parent.unknown_key_hint() if isinstance(parent, type) else "unknown key"
    else:
        allowed = _allowed(root, loc, err["msg"].removeprefix("Value error, "))
    return ConfigError(source, located(loc), value, allowed)


# --------------------------------------------------------------------------- files


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; syntax errors become ConfigError naming the file and line."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            str(path), where, "<unparseable>", f"YAML syntax error: {problem}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not a text file"
        raise ConfigError(str(path), "<file>", str(path), f"cannot read: {why}") from None


def resolve_named(
    name_or_path: str | Path, folder: Path, kind: str, missing: Callable[[str], ConfigError]
) -> Path:
    """A bare name is `<folder>/<name>.yaml` (`missing(name)` when absent); anything with a YAML
    suffix or a slash is a path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or "/" in text:
        if not path.exists():
            raise ConfigError(text, "<file>", text, f"no such {kind} file")
        return path
    path = folder / f"{text}.yaml"
    if not path.exists():
        raise missing(text)
    return path


def validate_model(
    data: Any,
    source: str,
    model: type[Model],
    shape: str,
    defaults: Mapping[str, Any] | None = None,
) -> Model:
    """Validate parsed YAML as `model` (`defaults` under its keys); `shape` says what the data
    must be when it is not a mapping. Every problem is one ConfigError line naming `source`."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, "<root>", data, shape)
    data = {**(defaults or {}), **data}
    try:
        loaded = model.model_validate(data)
    except ValidationError as exc:
        raise schema_error(exc, data, source, model) from None
    loaded._source = source
    return loaded


def load_model(
    path: Path, model: type[Model], shape: str, defaults: Mapping[str, Any] | None = None
) -> Model:
    """Read the YAML file `path` as `model` (see `validate_model`)."""
    return validate_model(load_yaml(path), str(path), model, shape, defaults)
