"""Search files: the typed schema of a study file of kind `search`, an Optuna search for the
hyper-parameters of one evaluation protocol on one pre-training.

    name: finetune_search
    kind: search
    scale: tiny
    protocol: finetune                 # finetune | linprobe | partial
    pretraining: {masking.ratio: 0.75} # paper labels; {} = the scale's baseline pre-training
    overrides: {finetune.epochs: 10}   # fixed settings of every trial and of both test runs
    space:                             # fields of the protocol's config section
      blr: {low: 1.0e-4, high: 1.0e-2, log: true}
      layer_decay: {low: 0.5, high: 0.9}
      epochs: {choices: [5, 10]}
    sampler: {kind: tpe, seed: 0}      # tpe | random | grid
    pruner: {kind: median}             # median | hyperband | none, on per-epoch validation top-1
    n_trials: 16                       # finished (complete or pruned) trials wanted
    workers: 2                         # trials at once: local processes or Slurm array tasks
    metric: val_top1                   # a validation metric: the test split is never searched on
    storage: null                      # SQLite beside the MLflow store; `journal`; or a URL

Structure and ranges are checked here; whether each bound is a valid config value is checked when
the search is planned (it needs the scale). Every problem is one `ConfigError` line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mae.config import ExperimentConfig, affects
from mae.overrides import flatten_dict
from mae.schema import Problem, Schema, load_yaml, schema_error, validate_model
from mae.sweep.spec import NAME_PATTERN, StudyFile, study_path

Protocol = Literal["finetune", "linprobe", "partial"]
# Fields a search never varies: they pick the data or the seed, not the recipe.
FIXED_FIELDS = frozenset({"seed", "dataset", "root", "image_size", "train_subset"})
METRICS = ("val_top1", "val_top5")  # validation metrics of mae.evaluate's per-epoch log
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")

EXPECTED = {
    "name": "a search name: letters, digits, '_', '-', '.'",
    "kind": "search",
    "description": "a string",
    "scale": "a scale name",
    "protocol": "finetune | linprobe | partial",
    "pretraining": "a mapping {dotted.key: paper label} of pre-training keys",
    "overrides": "a mapping {<protocol>.key: value} of fixed evaluation settings",
    "space": "a mapping {field: {low, high[, log, step]} | {choices: [...]}}",
    "sampler": "{kind: tpe | random | grid, seed: 0}",
    "pruner": "{kind: median | hyperband | none, ...}",
    "n_trials": "a positive integer",
    "workers": "a positive integer",
    "metric": " | ".join(METRICS),
    "direction": "maximize",
    "storage": "null (SQLite beside the MLflow store), journal, journal:PATH, or a database URL",
    "heartbeat": "{interval: 60, grace: 120, max_retry: 2}",
}

Number = StrictInt | StrictFloat


class Range(Schema):
    """A uniform range (log-uniform with `log`), stepped with `step`; ints on int fields."""

    low: Number
    high: Number
    log: StrictBool = False
    step: Number | None = Field(None, gt=0)


class Choices(Schema):
    """A set of values, e.g. epochs from [5, 10, 15]."""

    choices: list[StrictBool | StrictInt | StrictFloat | str | None] = Field(min_length=1)


class Sampler(Schema):
    kind: Literal["tpe", "random", "grid"] = "tpe"
    seed: StrictInt = Field(0, ge=0)
    n_startup_trials: StrictInt = Field(10, ge=0)  # TPE: random trials before modelling


class Pruner(Schema):
    """Median (Optuna's defaults, counted in epochs) or Hyperband (resources are epochs)."""

    kind: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: StrictInt = Field(5, ge=0)  # median: trials finished before pruning
    n_warmup_steps: StrictInt = Field(0, ge=0)  # median: epochs before a trial can be pruned
    min_resource: StrictInt = Field(1, ge=1)  # hyperband: epochs of the first rung
    reduction_factor: StrictInt = Field(3, ge=2)  # hyperband


class Heartbeat(Schema):
    """RDB storages (SQLite, PostgreSQL, MySQL): a trial whose worker stops beating for `grace`
    seconds is failed and retried (at most `max_retry` times) from its last checkpoint."""

    interval: StrictInt = Field(60, ge=1)
    grace: StrictInt = Field(120, ge=1)
    max_retry: StrictInt = Field(2, ge=0)


def field_kind(protocol: str, name: str) -> type | None:
    """int, float or None (a field that takes only choices) of `<protocol>.<name>`."""
    section = ExperimentConfig.model_fields[protocol].annotation
    annotation = section.model_fields[name].annotation
    return annotation if annotation in (int, float) else None


def searchable(protocol: str) -> list[str]:
    section = ExperimentConfig.model_fields[protocol].annotation
    return sorted(set(section.model_fields) - FIXED_FIELDS)


def _parse_param(name: str, raw: Any) -> Range | Choices:
    model: type[Schema] = Choices if isinstance(raw, dict) and "choices" in raw else Range
    if not isinstance(raw, dict):
        raise Problem(f"space.{name}", raw, EXPECTED["space"])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = schema_error(exc, raw, "", model)
        raise Problem(f"space.{name}.{err.key}", err.value, err.allowed) from None


def _check_range(name: str, param: Range, kind: type | None) -> None:
    where = f"space.{name}"
    if kind is None:
        raise Problem(where, param.model_dump(exclude_none=True), "this field takes {choices: []}")
    if param.low > param.high:
        raise Problem(where, param.model_dump(exclude_none=True), "low must not exceed high")
    if param.log and param.low <= 0:
        raise Problem(f"{where}.low", param.low, "a log range needs low > 0")
    if param.log and param.step is not None:
        raise Problem(f"{where}.step", param.step, "a log range takes no step")
    if kind is int:
        for bound in ("low", "high", "step"):
            value = getattr(param, bound)
            if value is not None and not float(value).is_integer():
                raise Problem(f"{where}.{bound}", value, "an integer: this field is an int")


def grid_values(param: Range | Choices) -> list[Any]:
    """The points a grid sampler visits: the choices, or the range's steps."""
    if isinstance(param, Choices):
        return list(param.choices)
    if param.step is None:
        raise ValueError("a range without a step has no grid")
    count = math.floor((param.high - param.low) / param.step + 1e-9) + 1
    values = [param.low + i * param.step for i in range(count)]
    return [round(v, 12) if isinstance(v, float) else v for v in values]


class SearchSpec(StudyFile):
    """A validated search file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["search"]
    description: str = ""
    scale: str = "tiny"
    protocol: Protocol = "finetune"
    pretraining: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    space: dict[str, Range | Choices]
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    n_trials: StrictInt = Field(ge=1)
    workers: StrictInt = Field(1, ge=1)
    metric: Literal["val_top1", "val_top5"] = "val_top1"
    direction: Literal["maximize", "minimize"] = "maximize"
    storage: str | None = None
    heartbeat: Heartbeat = Heartbeat()

    @classmethod
    def expected(cls, field: str) -> str:
        return EXPECTED.get(field, "")

    @field_validator("space", mode="before")
    @classmethod
    def _params(cls, space: Any) -> dict[str, Range | Choices]:
        if not isinstance(space, dict) or not space:
            raise Problem("space", space, "at least one parameter; " + EXPECTED["space"])
        return {str(name): _parse_param(str(name), raw) for name, raw in space.items()}

    @field_validator("pretraining")
    @classmethod
    def _pretraining_keys(cls, pretraining: dict[str, Any]) -> dict[str, Any]:
        flat = flatten_dict(pretraining)
        for key, value in flat.items():
            section = key.split(".")[0]
            if section not in ExperimentConfig.model_fields or not affects("pretrain", key):
                allowed = "a pre-training key (model, encoder, decoder, masking, target, data, "
                raise Problem(f"pretraining.{key}", value, allowed + "pretrain)")
        return flat

    @field_validator("overrides")
    @classmethod
    def _override_keys(cls, overrides: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        flat = flatten_dict(overrides)
        protocol = info.data.get("protocol", "finetune")
        for key, value in flat.items():
            if key.split(".")[0] not in (protocol, "runtime"):
                raise Problem(f"overrides.{key}", value, f"a {protocol}.* or runtime.* key")
        return flat

    @field_validator("storage")
    @classmethod
    def _storage(cls, storage: str | None) -> str | None:
        if storage is None or storage == "journal" or storage.startswith("journal:"):
            return storage
        scheme = storage.split(":", 1)[0].split("+", 1)[0]
        if "://" not in storage or scheme not in STORAGE_SCHEMES:
            raise Problem("storage", storage, EXPECTED["storage"])
        return storage

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        self._check_overrides()
        self._check_space()
        if self.direction != "maximize":
            raise Problem("direction", self.direction, f"{self.metric} is an accuracy: maximize")
        if self.sampler.kind == "grid":
            self._check_grid()
        return self

    def _check_overrides(self) -> None:
        for key, value in self.overrides.items():
            if key in self.searched_keys:
                raise Problem(f"overrides.{key}", value, f"searched by space.{key.split('.')[1]}")

    def _check_space(self) -> None:
        allowed = searchable(self.protocol)
        for name, param in self.space.items():
            if name not in allowed:
                hint = f"unknown parameter of {self.protocol}; allowed: {', '.join(allowed)}"
                raise Problem(f"space.{name}", name, hint)
            if isinstance(param, Range):
                _check_range(name, param, field_kind(self.protocol, name))
            elif len(set(map(repr, param.choices))) != len(param.choices):
                raise Problem(f"space.{name}.choices", param.choices, "values must differ")

    def _check_grid(self) -> None:
        size = 1
        for name, param in self.space.items():
            if isinstance(param, Range) and param.step is None:
                raise Problem(f"space.{name}", param.model_dump(exclude_none=True), GRID_NEEDS)
            size *= len(grid_values(param))
        if self.n_trials > size:
            raise Problem("n_trials", self.n_trials, f"at most the grid's {size} points")

    @property
    def searched_keys(self) -> list[str]:
        return [f"{self.protocol}.{name}" for name in self.space]


GRID_NEEDS = "the grid sampler needs {choices: [...]} or a range with a step"


def parse_search(raw: Any, source: str, default_name: str) -> SearchSpec:
    """Validate already-parsed YAML of kind `search`; every failure is one ConfigError line."""
    shape = "a search file is a mapping: " + ", ".join(EXPECTED)
    return validate_model(raw, source, SearchSpec, shape, defaults={"name": default_name})


def load_search(name_or_path: str | Path) -> SearchSpec:
    """Load and validate a search file by name (`studies/<name>.yaml`) or path."""
    path = study_path(name_or_path)
    return parse_search(load_yaml(path), str(path), default_name=path.stem)
