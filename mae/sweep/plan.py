"""Planning: a study × a scale -> the runs it needs, each with its content key and status.

The sweep's points (grid × cases) × seeds become configs in layers, later wins:

    scale base  <-  study overrides  <-  case / axis values  <-  --set overrides

where every value above the base is a paper label, mapped to the scale's value by the scale's maps.
Every config is validated, and an error is re-keyed to the place that set the bad value
(`sweep.masking.ratio[2]`, `cases[1].masking.sampler`). Runs are deduplicated by content key: one
pre-training per distinct encoder recipe, one evaluation per (pre-training, evaluation config), so a
baseline shared with other studies is planned (and later run) once. A pre-training with the dVAE
target and the in-project tokenizer waits for a `tokenizer` run, planned once for all the
pre-trainings that share its key. With a tracking store, each run's status comes from MLflow:
finished runs are reused, interrupted ones resume.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mae.config import (
    EVAL_STAGES,
    TABLE_AXES,
    ExperimentConfig,
    affects,
    canonical_json,
    run_key,
    uses_tokenizer_stage,
    validate_config,
)
from mae.overrides import apply_overrides, parse_override
from mae.schema import ConfigError
from mae.sweep.scale import Scale, label_str
from mae.sweep.search_files import is_reference, read_reference
from mae.sweep.spec import Evaluation, StudySpec
from mae.sweep.status import RunStatus, with_status

ROOT_DATASETS = ("imagefolder",)  # no default location: the user says where it is
PLAN_ORDER = {"tokenizer": 0, "pretrain": 1}  # then the evaluations, in the order planned


@dataclass(frozen=True)
class PlannedRun:
    """One tokenizer, pre-training or evaluation the study needs; `key` is its content key."""

    key: str
    stage: str  # tokenizer | pretrain | finetune | linprobe | partial | scratch
    config: ExperimentConfig
    name: str  # readable: study/axis=value/seed0/stage
    labels: dict[str, str]  # paper label of every TABLE_AXES key it depends on, as text
    # the key of the run this one waits for: an evaluation's pre-training, a dVAE-target
    # pre-training's tokenizer; None for the others
    depends_on: str | None
    study: str
    scale: str
    status: RunStatus = "new"
    run_id: str | None = None  # the MLflow run when one exists
    reason: str | None = None  # why a run is unavailable
    shared_with: tuple[str, ...] = ()  # other studies that need the same run


@dataclass(frozen=True)
class Plan:
    """Every run of a study at one scale: tokenizers, pre-trainings, then evaluations."""

    study: str
    scale: str
    runs: list[PlannedRun]
    tracking_uri: str | None = None
    experiment_id: str | None = None

    def counts(self) -> Counter[str]:
        return Counter(run.status for run in self.runs)


@dataclass(frozen=True)
class Setting:
    """A value in label space and the place that set it (for error lines)."""

    value: Any
    source: str  # a file, or --set / --seeds
    where: str  # dotted location in that source, without the list index
    index: int | None = None

    def located(self, bare: bool = False) -> str:
        return self.where if bare or self.index is None else f"{self.where}[{self.index}]"


@dataclass(frozen=True)
class Point:
    """One point of the sweep: settings in label space and a title for run names."""

    settings: dict[str, Setting]
    title: str


# --------------------------------------------------------------------------- expansion


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """'masking.ratio' -> 'ratio' unless two keys end alike, then the full key."""
    tails = Counter(k.rsplit(".", 1)[-1] for k in keys)
    return {k: k.rsplit(".", 1)[-1] if tails[k.rsplit(".", 1)[-1]] == 1 else k for k in keys}


def _title(settings: Mapping[str, Setting]) -> str:
    names = _short_names(list(settings))
    return ",".join(f"{names[k]}={label_str(s.value)}" for k, s in settings.items())


def sweep_points(spec: StudySpec) -> list[Point]:
    """Grid × cases (either alone; a single empty point when the study has neither)."""
    src = spec.source
    axes = spec.sweep or {}
    grid = [
        {
            key: Setting(value, src, f"sweep.{key}", i)
            for key, (i, value) in zip(axes, combo, strict=True)
        }
        for combo in itertools.product(*(list(enumerate(values)) for values in axes.values()))
    ]
    cases = [
        {key: Setting(value, src, f"cases[{j}].{key}") for key, value in case.items()}
        for j, case in enumerate(spec.cases or [{}])
    ]
    points = []
    for axis_settings, case_settings in itertools.product(grid, cases):
        settings = {**axis_settings, **case_settings}
        points.append(Point(settings, _title(settings)))
    return points


def parse_set(overrides: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Setting]:
    """`--set` values ('k=v' strings or a mapping) as settings."""
    if not overrides:
        return {}
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(_parse_set_item, overrides)
    return {key: Setting(value, "--set", key) for key, value in pairs}


def _parse_set_item(text: str) -> tuple[str, Any]:
    """'k=v' with v a YAML scalar, except a search reference '@search:<name>' (not YAML)."""
    key, sep, value = text.partition("=")
    if sep and is_reference(value.strip()):
        return key.strip(), value.strip()
    return parse_override(text)


def _expand(layer: Mapping[str, Setting], scale: str, uri: str | None) -> dict[str, Setting]:
    """`<stage>=@search:<name>` becomes one setting per best parameter of that search."""
    out: dict[str, Setting] = {}
    for key, setting in layer.items():
        if not is_reference(setting.value):
            out[key] = setting
            continue
        where = setting.located()
        params = read_reference(key, setting.value, scale, uri, setting.source, where)
        out.update({k: replace(setting, value=v) for k, v in params.items()})
    return out


def _seed_settings(seed: int, index: int, source: str) -> dict[str, Setting]:
    """A seed seeds the pre-training and every evaluation protocol."""
    return {
        f"{section}.seed": Setting(seed, source, "seeds", index)
        for section in ("pretrain", *EVAL_STAGES)
    }


def _merge(*layers: Mapping[str, Setting]) -> dict[str, Setting]:
    """Later layers win and move to the end, so the order says which layer set a key last."""
    merged: dict[str, Setting] = {}
    for layer in layers:
        for key, setting in layer.items():
            merged.pop(key, None)
            merged[key] = setting
    return merged


# --------------------------------------------------------------------------- validation


def _blame(error: ConfigError, settings: Mapping[str, Setting]) -> Setting | None:
    """The setting behind a config error: the key itself, a key under it (a section-level check
    such as grid masking's ratio), or a key the message names (a geometry check)."""
    if error.key in settings:
        return settings[error.key]
    under = [s for k, s in settings.items() if k.startswith(f"{error.key}.")]
    named = [s for k, s in settings.items() if k in error.allowed]
    candidates = under or named
    return candidates[-1] if candidates else None


def _rekey(error: ConfigError, settings: Mapping[str, Setting], scale: Scale) -> ConfigError:
    setting = _blame(error, settings)
    if setting is None:  # nothing the study set: the scale's own base config is at fault
        return ConfigError(scale.source, f"config.{error.key}", error.value, error.allowed)
    where = setting.located(bare=error.allowed.startswith("unknown key"))
    return ConfigError(setting.source, where, setting.value, error.allowed)


class _Validator:
    """Builds configs from the scale's base and mapped settings; each distinct set of values is
    expanded and validated once (evaluations reuse their pre-training's config)."""

    def __init__(self, scale: Scale):
        self.scale = scale
        self.cache: dict[str, ExperimentConfig] = {}

    def __call__(
        self, values: Mapping[str, Any], settings: Mapping[str, Setting]
    ) -> ExperimentConfig:
        ident = json.dumps(values, default=repr)  # ordered: the order overrides are applied in
        if ident not in self.cache:
            try:
                cfg = validate_config(apply_overrides(self.scale.config, values), self.scale.source)
            except ConfigError as exc:
                raise _rekey(exc, settings, self.scale) from None
            _check_roots(cfg, settings, self.scale)
            self.cache[ident] = cfg
        return self.cache[ident]


def _check_roots(cfg: ExperimentConfig, settings: Mapping[str, Setting], scale: Scale) -> None:
    """Paths only the user knows: an ImageFolder's root, the DALL-E tokenizer's weights file."""
    needs = [("data", cfg.data.dataset, cfg.data.root)]
    for stage in EVAL_STAGES:
        section = getattr(cfg, stage)
        if section.dataset not in (None, cfg.data.dataset):
            needs.append((stage, section.dataset, section.root))
    for section, dataset, root in needs:
        if dataset in ROOT_DATASETS and not root:
            allowed = f"required for {section}.dataset={dataset}; pass --set {section}.root=/path"
            raise _rekey(
                ConfigError(scale.source, f"{section}.root", root, allowed), settings, scale
            )
    dalle = cfg.target.kind == "dvae" and cfg.tokenizer.kind == "dalle"
    if dalle and not Path(cfg.tokenizer.weights or "").is_file():
        allowed = "a local file for tokenizer.kind=dalle; pass --set tokenizer.weights=PATH"
        error = ConfigError(scale.source, "tokenizer.weights", cfg.tokenizer.weights, allowed)
        raise _rekey(error, settings, scale)


# --------------------------------------------------------------------------- planning


def _translate(
    settings: Mapping[str, Setting], scale: Scale
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Paper labels -> scale values; also the labels with no counterpart at this scale."""
    values: dict[str, Any] = {}
    missing: dict[str, Any] = {}
    for key, setting in settings.items():
        available, value = scale.lookup(key, setting.value)
        if available:
            values[key] = value
        else:
            missing[key] = setting.value
    return values, missing


def _unavailable_reason(
    stage: str, cfg: ExperimentConfig, missing: Mapping[str, Any], scale: Scale
) -> str | None:
    for key, label in missing.items():
        if affects(stage, key):
            return f"{key}={label_str(label)} has no counterpart at scale {scale.name} (its maps)"
    return None


def _value(cfg: ExperimentConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _labels(
    cfg: ExperimentConfig, scale: Scale, keys: Iterable[str], missing: Mapping[str, Any]
) -> dict[str, str]:
    return {
        key: label_str(missing[key] if key in missing else scale.label(key, _value(cfg, key)))
        for key in keys
    }


def _label_keys(stage: str) -> list[str]:
    """The labels a run carries: the table axes its key depends on (+ partial.blocks)."""
    if stage == "tokenizer":
        return [key for key in TABLE_AXES if affects("tokenizer", key)]
    return [*TABLE_AXES, *(["partial.blocks"] if stage == "partial" else [])]


def stage_noun(stage: str) -> str:
    """How messages name a stage: 'pre-training', 'tokenizer', 'finetune'..."""
    return {"pretrain": "pre-training"}.get(stage, stage)


def _placeholder_key(study: str, name: str) -> str:
    """Unavailable runs have no config to hash; they get a key no real run can have."""
    payload = canonical_json({"unavailable": name, "study": study})
    return hashlib.sha256(payload.encode()).hexdigest()


def _grid_settings(evaluation: Evaluation, index: int, source: str) -> list[dict[str, Setting]]:
    """The settings of each point of an evaluation's own grid (e.g. partial's k list)."""
    keys = list(evaluation.grid)
    where = f"evaluations[{index}].{evaluation.stage}"
    return [
        {
            f"{evaluation.stage}.{key}": Setting(value, source, f"{where}.{key}", i)
            for key, (i, value) in zip(keys, combo, strict=True)
        }
        for combo in itertools.product(*(list(enumerate(evaluation.grid[k])) for k in keys))
    ]


@dataclass
class _Builder:
    """Accumulates deduplicated runs and each point's run keys (to catch duplicate points)."""

    spec: StudySpec
    scale: Scale
    validate: _Validator
    runs: dict[str, PlannedRun] = field(default_factory=dict)
    signatures: dict[tuple[str, ...], Point] = field(default_factory=dict)

    def point(self, point: Point, layers: Sequence[Mapping[str, Setting]], seed: int) -> None:
        """Plan one sweep point at one seed: its pre-training and evaluations."""
        spec = self.spec
        settings = _merge(*layers)
        prefix = "/".join(p for p in (spec.name, point.title, f"seed{seed}") if p)
        keys: list[str] = []
        pretrain = None
        if not spec.evaluations or any(e.stage != "scratch" for e in spec.evaluations):
            tokenizer = self._tokenizer(settings, point)
            pretrain = self._run("pretrain", settings, f"{prefix}/pretrain", tokenizer)
            keys.append(pretrain.key)
        for index, evaluation in enumerate(spec.evaluations):
            stage = evaluation.stage
            for grid in _grid_settings(evaluation, index, spec.source):
                name = f"{prefix}/{stage}" + (f"/{_title(grid)}" if grid else "")
                run = self._run(stage, _merge(settings, grid), name, pretrain)
                keys.append(run.key)
        signature = tuple(keys)
        if signature in self.signatures:
            raise _duplicate(point, self.signatures[signature], spec)
        self.signatures[signature] = point

    def _tokenizer(self, settings: Mapping[str, Setting], point: Point) -> PlannedRun | None:
        """The tokenizer run a point's pre-training waits for, if it needs one: named after the
        first point that plans it, and shared by every seed and point with the same key."""
        values, _ = _translate(settings, self.scale)
        if not uses_tokenizer_stage(self.validate(values, settings)):
            return None
        name = "/".join(p for p in (self.spec.name, point.title, "tokenizer") if p)
        return self._run("tokenizer", settings, name, None)

    def _run(
        self, stage: str, settings: Mapping[str, Setting], name: str, parent: PlannedRun | None
    ) -> PlannedRun:
        scale = self.scale
        values, missing = _translate(settings, scale)
        cfg = self.validate(values, settings)
        depends_on = parent.key if parent is not None and stage != "scratch" else None
        reason = _unavailable_reason(stage, cfg, missing, scale)
        if reason is None and depends_on and parent is not None and parent.reason:
            reason = f"its {stage_noun(parent.stage)} is unavailable: {parent.reason}"
        if reason is not None:
            key = _placeholder_key(self.spec.name, name)
        else:
            key = run_key(cfg, stage)
        run = PlannedRun(
            key=key,
            stage=stage,
            config=cfg,
            name=name,
            labels=_labels(cfg, scale, _label_keys(stage), missing),
            depends_on=depends_on,
            study=self.spec.name,
            scale=scale.name,
            status="unavailable" if reason else "new",
            reason=reason,
        )
        return self.runs.setdefault(key, run)


def _duplicate(point: Point, earlier: Point, spec: StudySpec) -> ConfigError:
    """Two points that plan the same runs: name the place of the later one and the earlier one."""
    differing = [k for k, s in point.settings.items() if earlier.settings.get(k) != s]
    if not differing:
        return ConfigError(spec.source, "sweep", point.title, "the sweep repeats a point")
    key = differing[0]
    setting = point.settings[key]
    other = earlier.settings[key].located() if key in earlier.settings else earlier.title
    return ConfigError(
        setting.source,
        setting.located(),
        setting.value,
        f"plans the same runs as {other} ({earlier.title or 'the baseline'}); points must differ "
        "in a planned run (a duplicate case, two labels the scale maps to one value, or a key no "
        "planned stage uses)",
    )


def plan_study(
    spec: StudySpec,
    scale: Scale,
    overrides: Iterable[str] | Mapping[str, Any] | None = (),
    seeds: Sequence[int] | None = None,
    tracking_uri: str | None = None,
    experiment_id: str | None = None,
    reference_uri: str | None = None,
) -> Plan:
    """Expand a study at a scale into deduplicated runs; with a store, give each its status.

    `overrides` are `--set` values ('key=value' or a mapping) in paper labels, applied last;
    `seeds` replaces the study's. A value `@search:<name>` for an evaluation section stands for
    that search's best parameters, read beside the store `reference_uri` (default: the tracking
    URI, else the default store). Raises ConfigError (nothing launched, nothing written) when
    any expanded config is invalid or two sweep points plan the same runs.
    """
    uri = reference_uri or tracking_uri
    set_layer = _expand(parse_set(overrides), scale.name, uri)
    swept = {*(spec.sweep or {}), *(k for case in spec.cases or [] for k in case)}
    swept |= {f"{e.stage}.{k}" for e in spec.evaluations for k in e.grid}
    for key, setting in set_layer.items():
        if key in swept:
            raise ConfigError(
                "--set",
                key,
                setting.value,
                "this key is swept by the study; edit the study file or use another study",
            )
    seed_list = list(seeds) if seeds is not None else list(spec.seeds)
    seed_source = "--seeds" if seeds is not None else spec.source
    overrides_layer = {
        key: Setting(value, spec.source, f"overrides.{key}")
        for key, value in spec.overrides.items()
    }
    overrides_layer = _expand(overrides_layer, scale.name, uri)
    builder = _Builder(spec, scale, _Validator(scale))
    for point in sweep_points(spec):
        for index, seed in enumerate(seed_list):
            seed_layer = _seed_settings(seed, index, seed_source)
            builder.point(point, (seed_layer, overrides_layer, point.settings, set_layer), seed)
    runs = sorted(builder.runs.values(), key=lambda r: PLAN_ORDER.get(r.stage, len(PLAN_ORDER)))
    plan = Plan(spec.name, scale.name, runs, tracking_uri, experiment_id)
    return with_status(plan) if tracking_uri else plan


def mark_shared(plan: Plan, others: Iterable[Plan]) -> Plan:
    """Note, for each run, the other studies whose plans (same scale) need the same run."""
    users: dict[str, list[str]] = {}
    for other in others:
        if other.study == plan.study or other.scale != plan.scale:
            continue
        for run in other.runs:
            users.setdefault(run.key, []).append(other.study)
    runs = [
        replace(run, shared_with=tuple(dict.fromkeys((*run.shared_with, *users.get(run.key, [])))))
        for run in plan.runs
    ]
    return replace(plan, runs=runs)
