"""Run a search study: plan its pre-training through the normal plan, send workers through the
launcher until the Optuna study has its trials, then evaluate the best parameters once on the
test split beside the scale's default recipe, and record the result.

    1. the pre-training (skipped when its content key already finished)
    2. workers: `workers` jobs at once (a bounded local queue or one Slurm array), each joining
       the study with `load_if_exists`; a second run of the command continues the same study
    3. two ordinary evaluation runs with content keys: the best parameters and the default recipe
    4. the best parameters as YAML beside the store (`@search:<name>` for other studies), and the
       search's MLflow run (the parent of every trial's run) with the outcome

`plan_search` checks everything that can be wrong in the file or on the command line before
anything is written; `run_search` writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from mae import track
from mae.config import ExperimentConfig, validate_config
from mae.jobs import END_REASON
from mae.overrides import apply_overrides
from mae.paths import CHECKPOINT
from mae.paths import runs_dir as default_runs_dir
from mae.schema import ConfigError
from mae.sweep.launch import LaunchReport, launch, run_jobs, workdir_for
from mae.sweep.plan import Plan, PlannedRun, parse_set, plan_study
from mae.sweep.profile import SlurmProfile
from mae.sweep.scale import Scale
from mae.sweep.search_record import (
    best_record,
    importances,
    open_parent,
    reconcile,
    save_outcome,
    test_numbers,
)
from mae.sweep.search_spec import Choices, SearchSpec, field_kind
from mae.sweep.search_study import (
    beat_for_running,
    build_storage,
    fail_and_retry,
    fail_stale_trials,
    has_heartbeat,
    storage_url,
    study_name,
    trial_counts,
    worker_seed,
)
from mae.sweep.spec import StudySpec
from mae.sweep.status import with_status
from mae.sweep.worker import SearchWorker

log = logging.getLogger(__name__)

MAX_ROUNDS = 5  # launches of workers per command, should trials fail or workers die
POLL_S = 2.0


@dataclass(frozen=True)
class SearchPlan:
    """A validated search at one scale: its pre-training, the default-recipe evaluation (the
    trials' base config and the comparison) and where its Optuna study lives."""

    spec: SearchSpec
    scale: Scale
    pretrain: PlannedRun
    default: PlannedRun
    study_name: str
    storage_url: str
    tracking_uri: str
    overrides: tuple[str, ...] = ()

    @property
    def protocol(self) -> str:
        return self.spec.protocol

    @property
    def base(self) -> ExperimentConfig:
        return self.default.config

    @property
    def metric(self) -> str:
        return f"{self.protocol}/{self.spec.metric}"

    @property
    def max_epochs(self) -> int:
        param = self.spec.space.get("epochs")
        if param is None:
            return int(getattr(self.base, self.protocol).epochs)
        values = param.choices if isinstance(param, Choices) else [param.high]
        return int(max(values))


# --------------------------------------------------------------------------- planning


def as_study(spec: SearchSpec, params: dict[str, Any] | None = None) -> StudySpec:
    """The search as an ordinary study: its pre-training and one evaluation, with `params`."""
    overrides = {**spec.pretraining, **spec.overrides}
    overrides.update({f"{spec.protocol}.{k}": v for k, v in (params or {}).items()})
    study = StudySpec.model_validate(
        {
            "name": spec.name,
            "scale": spec.scale,
            "evaluations": [spec.protocol],
            "overrides": overrides,
            "description": spec.description,
        }
    )
    study._source = spec.source
    return study


def _rekey(exc: ConfigError, spec: SearchSpec) -> ConfigError:
    """Plan errors name `overrides.<key>`; say `pretraining.<key>` where the file did."""
    key = exc.key.removeprefix("overrides.")
    if exc.source == spec.source and key in spec.pretraining:
        return ConfigError(exc.source, f"pretraining.{key}", exc.value, exc.allowed)
    return exc


def _check_set(spec: SearchSpec, overrides: tuple[str, ...]) -> None:
    for key, setting in parse_set(overrides).items():
        if key in spec.searched_keys:
            where = f"searched by space.{key.split('.', 1)[1]} of {spec.source}"
            raise ConfigError("--set", key, setting.value, where)


def _check_space(spec: SearchSpec, base: ExperimentConfig) -> None:
    """Every bound and choice is a value the protocol's config accepts."""
    tree = base.model_dump(mode="json")
    for name, param in spec.space.items():
        if isinstance(param, Choices):
            points = [(f"choices[{i}]", v) for i, v in enumerate(param.choices)]
        else:
            points = [("low", param.low), ("high", param.high)]
        for where, value in points:
            try:
                validate_config(apply_overrides(tree, {f"{spec.protocol}.{name}": value}))
            except ConfigError as exc:
                where = f"space.{name}.{where}"
                raise ConfigError(spec.source, where, value, exc.allowed) from None


def plan_search(
    spec: SearchSpec, scale: Scale, overrides: tuple[str, ...] = (), tracking_uri: str | None = None
) -> SearchPlan:
    """Validate the search at `scale` (ConfigError on any problem) without writing anything."""
    _check_set(spec, overrides)
    uri = track.resolve_tracking_uri(tracking_uri)
    try:
        plan = plan_study(as_study(spec), scale, overrides, reference_uri=uri)
    except ConfigError as exc:
        raise _rekey(exc, spec) from None
    pretrain, default = plan.runs
    if default.status == "unavailable":
        raise ConfigError(spec.source, "pretraining", spec.pretraining, default.reason or "")
    _check_space(spec, default.config)
    schedules = getattr(default.config, spec.protocol).epochs
    if isinstance(schedules, list) and "epochs" not in spec.space:  # partial: best of several
        allowed = f"a trial trains one schedule; search them: epochs: {{choices: {schedules}}}"
        key = f"{spec.protocol}.epochs"
        where = f"overrides.{key}" if key in spec.overrides else f"{key} (the scale's recipe)"
        raise ConfigError(spec.source, where, schedules, allowed)
    recipe = getattr(default.config, spec.protocol).model_dump(mode="json")
    identity = {
        "pretrain_key": pretrain.key,
        "protocol": spec.protocol,
        "recipe": {k: v for k, v in recipe.items() if k not in spec.space},
        "space": {name: param.model_dump() for name, param in spec.space.items()},
        "metric": spec.metric,
        "direction": spec.direction,
    }
    searched = SearchPlan(
        spec=spec,
        scale=scale,
        pretrain=pretrain,
        default=replace(default, name=f"{spec.name}/default/{spec.protocol}"),
        study_name=study_name(spec.name, scale.name, identity),
        storage_url=storage_url(spec.storage, uri),
        tracking_uri=uri,
        overrides=tuple(overrides),
    )
    if spec.pruner.kind == "hyperband" and spec.pruner.min_resource > searched.max_epochs:
        raise ConfigError(
            spec.source,
            "pruner.min_resource",
            spec.pruner.min_resource,
            f"at most the longest trial's {searched.max_epochs} epochs",
        )
    return searched


def best_run(sp: SearchPlan, params: dict[str, Any]) -> PlannedRun:
    """The evaluation run of the best parameters: an ordinary run with a content key."""
    plan = plan_study(
        as_study(sp.spec, params), sp.scale, sp.overrides, reference_uri=sp.tracking_uri
    )
    return replace(plan.runs[1], name=f"{sp.spec.name}/best/{sp.protocol}")


# --------------------------------------------------------------------------- running


@dataclass
class Launcher:
    """How this command sends jobs out (the same for every phase)."""

    cluster: str = "local"
    max_parallel: int | None = None
    runs_dir: Path | None = None
    profile: SlurmProfile | None = None
    max_restarts: int = 3  # local jobs (and workers) that died are started again
    leave_running: bool = False  # Ctrl-C: leave Slurm jobs running instead of cancelling them

    def plan(self, sp: SearchPlan, runs: list[PlannedRun], experiment_id: str) -> LaunchReport:
        unique = list({run.key: run for run in runs}.values())
        plan = Plan(sp.spec.name, sp.scale.name, unique, sp.tracking_uri, experiment_id)
        report = launch(
            with_status(plan),
            cluster=self.cluster,
            max_parallel=self.max_parallel,
            tracking_uri=sp.tracking_uri,
            experiment_id=experiment_id,
            runs_dir=self.runs_dir,
            profile=self.profile,
            max_restarts=self.max_restarts,
            leave_running=self.leave_running,
        )
        return launched(report)

    def workers(self, sp: SearchPlan, jobs: dict[str, SearchWorker]) -> LaunchReport:
        report = run_jobs(
            dict(jobs),
            sp.spec.name,
            self.cluster,
            len(jobs),
            self.runs_dir,
            self.profile,
            max_restarts=self.max_restarts,
            leave_running=self.leave_running,
        )
        return launched(report)


class Interrupted(Exception):
    """Ctrl-C reached a launch: its jobs were cancelled (their trials handed back) or left
    running. Running the command again continues the search."""


def launched(report: LaunchReport) -> LaunchReport:
    if report.interrupted:
        raise Interrupted(", ".join(report.interrupted))
    return report


def open_study(sp: SearchPlan) -> optuna.Study:
    """Create the storage and the study once, before any worker joins it, and beat once for the
    trials an earlier launch left RUNNING (`beat_for_running`)."""
    if sp.storage_url.startswith("journal:"):
        Path(sp.storage_url.removeprefix("journal:")).parent.mkdir(parents=True, exist_ok=True)
    storage = build_storage(sp.storage_url, sp.spec.heartbeat)
    study = optuna.create_study(
        storage=storage,
        study_name=sp.study_name,
        direction=sp.spec.direction,
        load_if_exists=True,
    )
    if has_heartbeat(sp.storage_url):
        beat_for_running(storage, sp.study_name)
    return study


def workers(
    sp: SearchPlan, count: int, salt: int, experiment_id: str, parent_run_id: str, runs: Path
) -> dict[str, SearchWorker]:
    """`count` workers; `salt` (the trials so far) makes this launch's sampler seeds new."""
    spec, protocol = sp.spec, sp.protocol
    base = sp.base.model_dump(mode="json")
    # the launcher shows a worker's epoch against the longest trial the space allows
    shown = apply_overrides(base, {f"{protocol}.epochs": sp.max_epochs})
    pretrain_dir = workdir_for(runs, sp.scale.name, "pretrain", sp.pretrain.key)
    # runs/<scale>/search/<search>/<study hash>/: workers' progress, trials' checkpoints
    root = runs / sp.scale.name / "search" / spec.name / sp.study_name.rsplit("/", 1)[-1]
    return {
        f"worker{i}": SearchWorker(
            name=f"{spec.name}/worker{i}",
            stage=protocol,
            workdir=str(root / f"worker{i}"),
            config=shown,
            depends_on=None,
            search=spec.name,
            scale=sp.scale.name,
            study_name=sp.study_name,
            storage_url=sp.storage_url,
            heartbeat=spec.heartbeat,
            sampler=spec.sampler,
            sampler_seed=worker_seed(spec.sampler.seed, salt, i),
            pruner=spec.pruner,
            space=dict(spec.space),
            kinds={name: field_kind(protocol, name) for name in spec.space},
            metric=sp.metric,
            n_trials=spec.n_trials,
            max_epochs=sp.max_epochs,
            tracking_uri=sp.tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            pretrain_key=sp.pretrain.key,
            pretrain_checkpoint=str(pretrain_dir / CHECKPOINT),
            trials_dir=str(root / "trials"),
        )
        for i in range(count)
    }


def release_orphans(study: optuna.Study, sp: SearchPlan) -> int:
    """`--retry-failed`: fail every RUNNING trial (the user says no worker runs it any more; a
    journal has no heartbeat to find out) and enqueue its retry. Returns how many."""
    running = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    for number in running:
        fail_and_retry(study, number, sp.spec.heartbeat)
    return len(running)


def wait_for_running(study: optuna.Study, sp: SearchPlan) -> bool:
    """Trials RUNNING but no room for a worker: wait until they end or their heartbeats go
    stale (then they are failed and retried). False when they still run after the grace."""
    if not has_heartbeat(sp.storage_url):
        return False
    deadline = time.monotonic() + 2 * sp.spec.heartbeat.grace + sp.spec.heartbeat.interval
    while time.monotonic() < deadline:
        fail_stale_trials(study)
        if not trial_counts(study)["RUNNING"]:
            return True
        time.sleep(POLL_S)
    return False


def run_trials(
    sp: SearchPlan, study: optuna.Study, how: Launcher, experiment_id: str, parent: str
) -> str | None:
    """Launch workers until the study has its finished trials; None, or why it could not."""
    runs = Path(how.runs_dir) if how.runs_dir is not None else default_runs_dir()
    for _ in range(MAX_ROUNDS):
        fail_stale_trials(study)
        counts = trial_counts(study)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        if finished >= sp.spec.n_trials:
            return None
        missing = sp.spec.n_trials - finished - counts["RUNNING"]
        if missing <= 0:
            if wait_for_running(study, sp):
                continue
            return (
                f"{counts['RUNNING']} trial(s) still RUNNING without a live worker here; if none "
                "runs them any more, rerun with --retry-failed"
            )
        count = min(how.max_parallel or sp.spec.workers, missing)
        jobs = workers(sp, count, len(study.trials), experiment_id, parent, runs)
        report = how.workers(sp, jobs)
        if report.failed:
            return "; ".join(f"{name}: {error}" for name, error in report.failed)
        if trial_counts(study)["COMPLETE"] + trial_counts(study)["PRUNED"] == finished:
            return "the workers finished no trial"
    return f"still fewer than {sp.spec.n_trials} finished trials after {MAX_ROUNDS} launches"


@dataclass
class SearchOutcome:
    """What `run_search` did: None for `problem` when the search and both test runs finished."""

    problem: str | None = None
    record: dict[str, Any] | None = None
    path: str | None = None
    parent_run_id: str | None = None
    launches: list[LaunchReport] | None = None


def run_search(sp: SearchPlan, how: Launcher, retry_failed: bool = False) -> SearchOutcome:
    """Pre-train if needed, run the trials, test the best parameters and the default recipe."""
    experiment_id = track.init_store(sp.tracking_uri, sp.scale.name)
    pre = how.plan(sp, [sp.pretrain], experiment_id)
    if pre.failed:
        return SearchOutcome(problem=f"pre-training failed: {pre.failed[0][1]}", launches=[pre])
    study = open_study(sp)
    parent = open_parent(sp, experiment_id)
    try:
        return _trials_and_tests(sp, how, study, experiment_id, parent, retry_failed, pre)
    except (Interrupted, KeyboardInterrupt):
        reconcile(sp, study, experiment_id, parent)
        reason = "interrupted (Ctrl-C): run the search again to continue"
        track.MlflowLogger(sp.tracking_uri, parent).set_tags({END_REASON: reason})
        track.finish_run(sp.tracking_uri, parent, "KILLED")
        raise


def _trials_and_tests(
    sp: SearchPlan,
    how: Launcher,
    study: optuna.Study,
    experiment_id: str,
    parent: str,
    retry_failed: bool,
    pre: LaunchReport,
) -> SearchOutcome:
    if retry_failed and (released := release_orphans(study, sp)):
        log.info("%d RUNNING trial(s) failed and re-enqueued (--retry-failed)", released)
    problem = run_trials(sp, study, how, experiment_id, parent)
    reconcile(sp, study, experiment_id, parent)
    if problem is None and not trial_counts(study)["COMPLETE"]:
        problem = "no trial completed (all pruned or failed): widen the space or the pruner"
    if problem is not None:
        track.MlflowLogger(sp.tracking_uri, parent).set_tags({END_REASON: problem})
        track.finish_run(sp.tracking_uri, parent, "FAILED")
        return SearchOutcome(problem=problem, parent_run_id=parent, launches=[pre])
    best = best_run(sp, study.best_trial.params)
    tests = how.plan(sp, [sp.pretrain, sp.default, best], experiment_id)
    numbers = test_numbers(sp, experiment_id, {"best": best, "default": sp.default})
    record = best_record(sp, study, numbers, importances(study))
    path = save_outcome(sp, parent, record)
    problem = "; ".join(f"{name}: {error}" for name, error in tests.failed) or None
    track.finish_run(sp.tracking_uri, parent, "FAILED" if problem else "FINISHED")
    return SearchOutcome(problem, record, path, parent, [pre, tests])
