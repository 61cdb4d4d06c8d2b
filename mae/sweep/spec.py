"""Study files: the typed schema of `studies/<name>.yaml` and its loader.

A study names a paper experiment in the paper's own values: a grid of axes (`sweep`), explicit
`cases` for zipped axes, the evaluations to run after each pre-training, seeds and fixed overrides.
Structure is checked here; every expanded config is checked by the planner. Either way a problem is
one `ConfigError` line naming the file, the dotted key and what is allowed.

    name: mask_sampling
    description: Random vs block vs grid masking.
    reproduces: Table 1f
    scale: tiny
    cases:
      - {masking.sampler: random, masking.ratio: 0.75}
      - {masking.sampler: block, masking.ratio: 0.5}
    evaluations: [finetune, linprobe, {partial: {blocks: [0, 0.5, 24]}}]
    seeds: [0]
    overrides: {data.augmentation: crop_rand}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictInt, field_validator, model_validator

from mae.config import EVAL_STAGES
from mae.overrides import flatten_dict
from mae.paths import project_root
from mae.schema import (
    ConfigError,
    Problem,
    Schema,
    YamlFile,
    load_yaml,
    resolve_named,
    validate_model,
)
from mae.sweep.scale import available_scales

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

# What each top-level key expects, appended to pydantic's message for wrong types.
EXPECTED = {
    "name": "a study name: letters, digits, '_', '-', '.'",
    "kind": "study (the default) or search (an Optuna search, mae.sweep.search_spec)",
    "description": "a string",
    "reproduces": "the paper figure or table, e.g. 'Table 1a'",
    "scale": "a scale name",
    "sweep": "a mapping {dotted.key: [value, ...]}, e.g. {masking.ratio: [0.5, 0.75]}",
    "cases": "a list of mappings {dotted.key: value}",
    "evaluations": "a list of finetune | linprobe | scratch | {partial: {blocks: [k, ...]}}",
    "seeds": "a list of distinct non-negative integers, e.g. [0, 1, 2]",
    "overrides": "a mapping {dotted.key: value}",
}


def studies_dir() -> Path:
    return project_root() / "studies"


def file_kind(path: Path) -> str:
    """A study file's `kind`: `study` (the default) or `search`."""
    raw = load_yaml(path)
    return str(raw.get("kind", "study")) if isinstance(raw, Mapping) else "study"


def available_studies(kind: str = "study") -> list[str]:
    """The shipped study files of one kind (`study` or `search`)."""
    return sorted(p.stem for p in studies_dir().glob("*.yaml") if file_kind(p) == kind)


def _duplicates(values: list[Any]) -> tuple[int, int] | None:
    """(later, earlier) indices of the first repeated value, by type and value (1 != True)."""
    seen: dict[tuple[type, Any], int] = {}
    for i, value in enumerate(values):
        ident = (type(value), repr(value))
        if ident in seen:
            return i, seen[ident]
        seen[ident] = i
    return None


def _non_empty_unique(values: Any, where: str) -> list[Any]:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise Problem(where, values, "a non-empty list of values")
    if dup := _duplicates(values):
        later, earlier = dup
        raise Problem(
            f"{where}[{later}]", values[later], f"values must differ; repeats [{earlier}]"
        )
    return values


class Evaluation(Schema):
    """One evaluation protocol, optionally swept over keys of its own section (partial's k)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    grid: dict[str, list[Any]] = {}


def _parse_evaluation(item: Any, i: int) -> Evaluation:
    where = f"evaluations[{i}]"
    allowed_stages = "allowed: " + " | ".join(EVAL_STAGES)
    if isinstance(item, str):
        stage, grid = item, {}
    elif isinstance(item, Mapping) and len(item) == 1:
        stage, grid = next(iter(item.items()))
        grid = {} if grid is None else grid
        if not isinstance(grid, Mapping):
            raise Problem(
                f"{where}.{stage}", grid, "a mapping {key: [values]}, e.g. {blocks: [0, 1]}"
            )
    else:
        raise Problem(
            where, item, f"a stage name or {{stage: {{key: [values]}}}}; {allowed_stages}"
        )
    if stage not in EVAL_STAGES:
        raise Problem(where, stage, allowed_stages)
    axes = {str(k): _non_empty_unique(v, f"{where}.{stage}.{k}") for k, v in grid.items()}
    return Evaluation(stage=stage, grid=axes)


class StudyFile(YamlFile):
    """What the files under studies/ (studies and searches) check alike: the keys they allow and
    a known scale. Fields stay in each subclass, in the order its error messages list them."""

    @classmethod
    def unknown_key_hint(cls) -> str:
        return "unknown key; allowed keys: " + ", ".join(cls.model_fields)

    @field_validator("scale", check_fields=False)
    @classmethod
    def _known_scale(cls, scale: str) -> str:
        if scale not in available_scales():
            raise Problem("scale", scale, "allowed: " + " | ".join(available_scales()))
        return scale


class StudySpec(StudyFile):
    """A validated study file (paths and values are the paper's; the scale maps them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["study"] = "study"
    description: str = ""
    reproduces: str | None = None
    scale: str = "tiny"
    sweep: dict[str, Any] | None = None
    cases: list[dict[str, Any]] | None = None
    evaluations: list[Evaluation] = []
    seeds: list[StrictInt] = [0]
    overrides: dict[str, Any] = {}

    @classmethod
    def expected(cls, field: str) -> str:
        return EXPECTED.get(field, "")

    @field_validator("sweep")
    @classmethod
    def _axes(cls, sweep: dict[str, Any] | None) -> dict[str, list[Any]] | None:
        if sweep is None:
            return None
        if not sweep:
            raise Problem("sweep", sweep, "at least one axis {dotted.key: [value, ...]}")
        for key, values in sweep.items():
            if not isinstance(values, list):
                raise Problem(
                    f"sweep.{key}", values, "a non-empty list of values, e.g. [0.5, 0.75]"
                )
        return {k: _non_empty_unique(v, f"sweep.{k}") for k, v in sweep.items()}

    @field_validator("cases")
    @classmethod
    def _cases(cls, cases: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if cases is None:
            return None
        if not cases:
            raise Problem("cases", cases, "a non-empty list of {dotted.key: value} mappings")
        flat = [flatten_dict(case) for case in cases]
        for i, case in enumerate(flat):
            if not case:
                raise Problem(f"cases[{i}]", case, "a non-empty mapping {dotted.key: value}")
        if dup := _duplicates([sorted(case.items(), key=str) for case in flat]):
            later, earlier = dup
            raise Problem(
                f"cases[{later}]", cases[later], f"cases must differ; repeats [{earlier}]"
            )
        return flat

    @field_validator("evaluations", mode="before")
    @classmethod
    def _evaluations(cls, items: Any) -> list[Evaluation]:
        if not isinstance(items, list):
            raise Problem("evaluations", items, EXPECTED["evaluations"])
        evaluations = [_parse_evaluation(item, i) for i, item in enumerate(items)]
        if dup := _duplicates([e.stage for e in evaluations]):
            later, earlier = dup
            raise Problem(
                f"evaluations[{later}]",
                evaluations[later].stage,
                f"each stage once; repeats [{earlier}] (list several k under one partial entry)",
            )
        return evaluations

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        for i, seed in enumerate(seeds):
            if seed < 0:
                raise Problem(f"seeds[{i}]", seed, EXPECTED["seeds"])
        return _non_empty_unique(seeds, "seeds")

    @field_validator("overrides")
    @classmethod
    def _flat_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        return flatten_dict(overrides)

    @model_validator(mode="after")
    def _cases_do_not_resweep(self) -> StudySpec:
        for i, case in enumerate(self.cases or []):
            for key in case:
                if key in (self.sweep or {}):
                    raise Problem(
                        f"cases[{i}].{key}",
                        case[key],
                        f"a key swept by sweep.{key} cannot be a case",
                    )
        return self


def _unknown_study(name: str) -> ConfigError:
    available = ", ".join(available_studies() + available_studies("search"))
    return ConfigError(name, "<study>", name, "no such study; available: " + available)


def study_path(name_or_path: str | Path) -> Path:
    """`studies/<name>.yaml` for a bare name, else the path (a ConfigError when missing)."""
    return resolve_named(name_or_path, studies_dir(), "study", _unknown_study)


def parse_study(raw: Any, source: str, default_name: str) -> StudySpec:
    """Validate already-parsed YAML; every failure is one ConfigError line about `source`."""
    shape = "a study file is a mapping: " + ", ".join(EXPECTED)
    return validate_model(raw, source, StudySpec, shape, defaults={"name": default_name})


def load_study(name_or_path: str | Path) -> StudySpec:
    """Load and validate a study file by name (`studies/<name>.yaml`) or path."""
    path = study_path(name_or_path)
    return parse_study(load_yaml(path), str(path), default_name=path.stem)
