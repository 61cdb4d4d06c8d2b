"""Launch a plan's runs through submitit: in-process (`debug`), a bounded local queue (`local`), or
Slurm job arrays from a cluster profile `slurm/<name>.yaml`; then wait and report.

Stages form a DAG: an evaluation starts only after its pre-training finished. Locally the queue
holds it back; on Slurm each stage is one job array and every evaluation task waits on its own
pre-training task through an `afterok` dependency. submitit's LocalExecutor would start every job
at once (and kill it after 2 minutes), so the local queue submits one job per free slot.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import submitit
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.local.debug import DebugJob
from submitit.slurm.slurm import SlurmJob, _convert_mem, _make_sbatch_string

from mae import track
from mae.config import EVAL_STAGES, ConfigError, Stage, load_yaml, validate_config
from mae.jobs import JobSpec, StageJob, read_progress
from mae.paths import project_root
from mae.paths import runs_dir as default_runs_dir

log = logging.getLogger(__name__)

IN_PROCESS = ("local", "debug")
STAGE_ORDER = ("pretrain", *EVAL_STAGES)
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # local jobs run to the end; submitit's default is 2 min
LOCAL_POLL_S = 0.25
SLURM_POLL_S = 3.0
QUEUED_STATES = {"PENDING", "REQUEUED", "UNKNOWN", "READY", "PREEMPTED"}  # sacct, not yet running


# --------------------------------------------------------------------------- cluster profiles


class StageResources(BaseModel):
    """What one stage asks for instead of the profile's defaults (e.g. evaluations on one node)."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int | None = Field(None, ge=1)


class SlurmProfile(BaseModel):
    """One `slurm/<name>.yaml`: where and with what resources the arrays of a study run.

    One task per GPU (`tasks_per_node = gpus_per_node`, at least 1): a multi-GPU or multi-node
    job runs DDP through submitit's TorchDistributedEnvironment.
    """

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    job_dir: str  # submitit's folder for pickles and logs: must be shared with the nodes
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float = Field(4, gt=0)
    timeout_min: int = Field(60, ge=1)
    signal_delay_s: int = Field(120, ge=0)  # USR2 this long before the time limit: checkpoint
    max_num_timeout: int = Field(30, ge=0)  # requeues after timeouts (preemptions: unlimited)
    array_parallelism: int = Field(256, ge=1)
    setup: list[str] = []  # shell lines before srun (modules, venv activation)
    python: str | None = None  # the interpreter command on the nodes; default: this one
    additional_parameters: dict[str, str | int | bool] = {}  # extra #SBATCH flags
    stages: dict[Stage, StageResources] = {}
    _source: str = PrivateAttr("<profile>")

    @property
    def source(self) -> str:
        return self._source

    def resources(self, stage: str) -> dict[str, Any]:
        """The profile's resources with the stage's overrides applied."""
        base = {k: getattr(self, k) for k in StageResources.model_fields}
        override = self.stages.get(stage)
        if override is not None:
            base.update(override.model_dump(exclude_none=True))
        return base

    def folder(self, strict: bool = True) -> Path:
        """`job_dir` with ~ and $VARS expanded; relative paths are under the project. `strict`
        refuses a variable left unset (jobs would write into a folder named `${USER}`)."""
        text = os.path.expandvars(self.job_dir)
        if strict and "$" in text:
            raise ConfigError(
                self.source, "job_dir", self.job_dir, "uses an unset environment variable"
            )
        path = Path(text).expanduser()
        return path if path.is_absolute() else project_root() / path


def profiles_dir() -> Path:
    return project_root() / "slurm"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _profile_error(source: str, exc: ValidationError, data: Any) -> ConfigError:
    """The first pydantic error as one line: file, dotted key, value, what is allowed."""
    err = exc.errors()[0]
    loc = [part for part in err["loc"] if part != "[key]"]  # a bad mapping key: name the key
    key = ".".join(map(str, loc)) or "<root>"
    value: Any = data
    for part in loc:
        value = value.get(part, "<missing>") if isinstance(value, Mapping) else "<missing>"
    if "[key]" in err["loc"]:
        value = loc[-1]
    if err["type"] == "extra_forbidden":
        model: type[BaseModel] = StageResources if len(err["loc"]) > 1 else SlurmProfile
        allowed = "unknown key; allowed keys here: " + ", ".join(sorted(model.model_fields))
    else:
        allowed = err["msg"].removeprefix("Value error, ")
    return ConfigError(source, key, value, allowed)


def load_profile(name_or_path: str | Path) -> SlurmProfile:
    """A cluster profile by name (`slurm/<name>.yaml`) or path, validated."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = profiles_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            allowed = ", ".join([*IN_PROCESS, *available_profiles()])
            raise ConfigError("--cluster", "cluster", str(name_or_path), f"allowed: {allowed}")
    data = load_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), "<root>", data, "a mapping of profile keys")
    try:
        profile = SlurmProfile.model_validate(data)
    except ValidationError as exc:
        raise _profile_error(str(path), exc, data) from None
    profile._source = str(path)
    for stage in EVAL_STAGES:  # mae.evaluate has no DDP: more tasks would repeat the same work
        res = profile.resources(stage)
        if res["nodes"] > 1 or res["gpus_per_node"] > 1:
            raise ConfigError(
                str(path),
                f"stages.{stage}",
                {k: res[k] for k in ("nodes", "gpus_per_node")},
                "evaluations run as one process: set nodes: 1 and gpus_per_node: 0 or 1",
            )
    return profile


def slurm_parameters(
    profile: SlurmProfile, stage: str, max_parallel: int | None = None
) -> dict[str, Any]:
    """The sbatch parameters of one stage's array, in submitit's Slurm names (what
    `SlurmExecutor.update_parameters` takes and `_make_sbatch_string` renders)."""
    res = profile.resources(stage)
    params: dict[str, Any] = {
        "job_name": f"mae-{stage}",
        "time": res["timeout_min"],
        "nodes": res["nodes"],
        "ntasks_per_node": max(1, res["gpus_per_node"]),
        "cpus_per_task": res["cpus_per_task"],
        "mem": _convert_mem(res["mem_gb"]),
        "signal_delay_s": profile.signal_delay_s,
        "array_parallelism": min(profile.array_parallelism, max_parallel or sys.maxsize),
    }
    if res["gpus_per_node"]:
        params["gpus_per_node"] = res["gpus_per_node"]
    params.update({k: res[k] for k in ("partition", "account", "qos", "constraint") if res[k]})
    if profile.setup:
        params["setup"] = list(profile.setup)
    if profile.additional_parameters:
        params["additional_parameters"] = dict(profile.additional_parameters)
    return params


# --------------------------------------------------------------------------- selecting runs


class PlannedRunLike(Protocol):
    """The fields of `mae.sweep.plan.PlannedRun` that launching reads."""

    key: str
    stage: str
    config: Any
    name: str
    labels: Mapping[str, Any]
    depends_on: str | None
    study: str
    scale: str
    status: str
    reason: str | None


@dataclass
class LaunchReport:
    """What a launch did: names launched and finished, (name, error) failed, (name, why) skipped."""

    launched: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def select_runs(
    runs: Sequence[PlannedRunLike], retry_failed: bool = False
) -> tuple[list[PlannedRunLike], list[tuple[str, str]]]:
    """Runs to launch (new, resumable, failed when retried) and (name, why) for the others; an
    evaluation whose pre-training will not run is skipped with it."""
    by_key = {run.key: run for run in runs}
    todo: list[PlannedRunLike] = []
    skipped: list[tuple[str, str]] = []
    blocked: dict[str, str] = {}
    for run in sorted(runs, key=lambda r: STAGE_ORDER.index(r.stage)):
        parent = by_key.get(run.depends_on) if run.depends_on else None
        if run.status == "finished":
            skipped.append((run.name, "already finished"))
        elif run.status == "unavailable":
            skipped.append((run.name, f"unavailable: {run.reason or 'not available'}"))
            blocked[run.key] = f"its pre-training {run.name} is unavailable"
        elif run.status == "failed" and not retry_failed:
            skipped.append((run.name, "failed before; rerun with --retry-failed"))
            blocked[run.key] = f"its pre-training {run.name} failed before"
        elif parent is not None and parent.key in blocked:
            skipped.append((run.name, blocked[parent.key]))
        else:
            todo.append(run)
    return todo, skipped


def workdir_for(runs_root: Path, scale: str, stage: str, key: str) -> Path:
    """`<runs>/<scale>/<stage>/<key[:16]>`: checkpoints and pictures of one run."""
    return Path(runs_root) / scale / stage / key[:16]


def _config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json")
    return validate_config(config).model_dump(mode="json")


def job_spec(
    run: PlannedRunLike, runs_root: Path, tracking_uri: str, experiment_id: str
) -> JobSpec:
    return JobSpec(
        key=run.key,
        stage=run.stage,
        config=_config_dict(run.config),
        name=run.name,
        study=run.study,
        scale=run.scale,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        workdir=str(workdir_for(runs_root, run.scale, run.stage, run.key)),
        labels=dict(run.labels),
        depends_on=run.depends_on,
        pretrain_workdir=(
            str(workdir_for(runs_root, run.scale, "pretrain", run.depends_on))
            if run.depends_on
            else None
        ),
    )


def threads_per_job(runs: Iterable[PlannedRunLike]) -> int:
    """The most CPU threads any of the runs asks for (all cores when a run does not say)."""
    cores = len(os.sched_getaffinity(0))
    asked = [_config_dict(run.config)["runtime"]["threads"] or cores for run in runs]
    return max(asked, default=1)


def default_max_parallel(runs: Sequence[PlannedRunLike]) -> int:
    return max(1, len(os.sched_getaffinity(0)) // threads_per_job(runs))


# --------------------------------------------------------------------------- waiting and summary


def _one_line(exc: BaseException) -> str:
    """`Type: message` of an exception; for a remote job's, the last line of its traceback."""
    if isinstance(exc, FailedJobError | UncompletedJobError):
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        tail = next((ln for ln in reversed(lines) if not ln.startswith((" ", "-"))), None)
        return (tail or type(exc).__name__).strip()
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def job_outcome(job: submitit.Job[Any]) -> str | None:
    """None when the job returned, else one line saying why not."""
    if isinstance(job, DebugJob) or job.paths.result_pickle.exists() or job.state == "COMPLETED":
        exc = job.exception()
        return None if exc is None else _one_line(exc)
    return f"job {job.job_id} ended without a result ({job.state}); log: {job.paths.stderr}"


class Summary:
    """Queued/running/done/failed per stage, and the epoch each running job has reached: redrawn
    in place on a TTY, otherwise a log line when the counts change or a minute has passed."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 60.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.last = ""
        self.last_counts = ""
        self.last_time = 0.0

    def show(self, counts: Mapping[str, Counter[str]], running: Sequence[str] = ()) -> None:
        counts_line = " | ".join(
            f"{stage}: {c['queued']} queued, {c['running']} running, {c['done']} done, "
            f"{c['failed']} failed"
            for stage, c in sorted(counts.items(), key=lambda kv: STAGE_ORDER.index(kv[0]))
        )
        line = counts_line + (f" || {', '.join(running)}" if running else "")
        now = time.monotonic()
        if line == self.last:
            return
        if not self.tty and counts_line == self.last_counts and now - self.last_time < self.every_s:
            return
        self.last, self.last_counts, self.last_time = line, counts_line, now
        if self.tty:
            width = shutil.get_terminal_size((200, 24)).columns
            self.stream.write(f"\r\033[K{line[: max(20, width - 1)]}")
            self.stream.flush()
        else:
            log.info("%s", line)

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Progress:
    """The launch's bookkeeping: which runs wait, run, finished or failed (by key)."""

    specs: dict[str, JobSpec]
    waiting: list[str]
    running: dict[str, submitit.Job[Any]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def depends_on(self, key: str) -> str | None:
        dep = self.specs[key].depends_on
        return dep if dep in self.specs else None

    def ready(self) -> list[str]:
        """Waiting runs whose pre-training is done (or not part of this launch), evaluations
        first so that results arrive early."""
        free = [k for k in self.waiting if (d := self.depends_on(k)) is None or d in self.done]
        return sorted(free, key=lambda k: self.specs[k].stage == "pretrain")

    def fail_dependents(self) -> list[submitit.Job[Any]]:
        """Evaluations of failed pre-trainings fail too; returns the jobs of those already
        submitted (held by their dependency on Slurm) for the caller to cancel."""
        held = []
        for key in [*self.waiting, *self.running]:
            dep = self.depends_on(key)
            if dep in self.failed:
                self.failed[key] = f"not run: its pre-training {self.specs[dep].name} failed"
                if key in self.running:
                    held.append(self.running.pop(key))
                else:
                    self.waiting.remove(key)
        return held

    def record(self, key: str, error: str | None) -> None:
        self.running.pop(key)
        if error is None:
            self.done.append(key)
        else:
            self.failed[key] = error
            log.error("%s failed: %s", self.specs[key].name, error)

    def epochs(self) -> list[str]:
        """`name epoch/epochs` of every running job that has finished an epoch."""
        shown = []
        for key in self.running:
            spec = self.specs[key]
            epoch = read_progress(spec.workdir)
            if epoch is not None:
                shown.append(f"{spec.name} {epoch}/{spec.config[spec.stage]['epochs']}")
        return shown

    def counts(self, state_of: Mapping[str, str] | None = None) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = {}
        for key, spec in self.specs.items():
            if key in self.failed:
                what = "failed"
            elif key in self.done:
                what = "done"
            elif key in self.running:
                queued = state_of is not None and state_of.get(key, "UNKNOWN") in QUEUED_STATES
                what = "queued" if queued else "running"
            else:
                what = "queued"
            counts.setdefault(spec.stage, Counter())[what] += 1
        return counts


# --------------------------------------------------------------------------- executors


def _local_queue(
    executor: submitit.Executor, progress: Progress, max_parallel: int, summary: Summary
) -> None:
    """Keep at most `max_parallel` jobs running; start the next one when one ends."""
    while progress.waiting or progress.running:
        progress.fail_dependents()
        for key in progress.ready()[: max(0, max_parallel - len(progress.running))]:
            progress.waiting.remove(key)
            progress.running[key] = executor.submit(StageJob(), progress.specs[key])
        summary.show(progress.counts(), progress.epochs())
        for key, job in list(progress.running.items()):
            # a debug job runs here, inside job_outcome; its done() would open pdb on a failure
            if isinstance(job, DebugJob) or job.done():
                progress.record(key, job_outcome(job))
        if progress.running:
            time.sleep(LOCAL_POLL_S)
    summary.show(progress.counts())


def _set_dependency(job_id: str, dependency: str) -> None:
    """Narrow one array task's dependency to its own pre-training task (or none). Should Slurm
    refuse, the task keeps the array's wider dependency: it may start later, never too early."""
    out = subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", f"Dependency={dependency}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        log.warning("could not narrow %s to %r: %s", job_id, dependency, out.stderr.strip())


def _submit_arrays(
    progress: Progress, profile: SlurmProfile, folder: Path, max_parallel: int | None
) -> None:
    """One array per stage. An evaluation array is submitted held by `afterok` on every
    pre-training task it needs; each task is then narrowed to its own pre-training task, so a
    failed pre-training holds back only its own evaluations."""
    for stage in STAGE_ORDER:
        keys = [k for k in progress.waiting if progress.specs[k].stage == stage]
        if not keys:
            continue
        parents = {k: progress.running[d].job_id for k in keys if (d := progress.depends_on(k))}
        params = slurm_parameters(profile, stage, max_parallel)
        if parents:
            params["dependency"] = "afterok:" + ":".join(sorted(set(parents.values())))
        executor = submitit.SlurmExecutor(
            folder, max_num_timeout=profile.max_num_timeout, python=profile.python
        )
        executor.update_parameters(**params)
        try:
            with executor.batch():
                jobs = [executor.submit(StageJob(), progress.specs[k]) for k in keys]
        except (UncompletedJobError, OSError) as exc:  # sbatch refused (bad partition, account..)
            error = f"sbatch failed: {_one_line(exc)}"
            log.error("%s array not submitted: %s", stage, error)
            for key in keys:
                progress.waiting.remove(key)
                progress.failed[key] = error
            progress.fail_dependents()
            continue
        for key, job in zip(keys, jobs, strict=True):
            progress.waiting.remove(key)
            progress.running[key] = job
            own = f"afterok:{parents[key]}" if key in parents else ""
            if parents and own != params["dependency"]:
                _set_dependency(job.job_id, own)
        log.info("submitted %s array %s (%d tasks)", stage, jobs[0].job_id.split("_")[0], len(jobs))


def _slurm_wait(progress: Progress, summary: Summary) -> None:
    """Poll sacct (one call for all jobs) until every job ended; cancel the evaluations of a
    failed pre-training (Slurm would hold them forever as DependencyNeverSatisfied)."""
    while progress.running:
        SlurmJob.watcher.update()
        states = {
            k: j.watcher.get_state(j.job_id, mode="cache") for k, j in progress.running.items()
        }
        for key, job in list(progress.running.items()):
            if job.watcher.is_done(job.job_id, mode="cache") or job.paths.result_pickle.exists():
                progress.record(key, job_outcome(job))
        for job in progress.fail_dependents():
            job.cancel(check=False)
        summary.show(progress.counts(states), progress.epochs())
        if progress.running:
            time.sleep(SLURM_POLL_S)
    summary.show(progress.counts())


# --------------------------------------------------------------------------- entry points


def _stamp(runs: Sequence[PlannedRunLike]) -> str:
    """A fresh submitit folder per launch: Slurm job ids restart after a controller wipe, and a
    stale result pickle under a reused id would pass for a finished job."""
    study = runs[0].study if runs else "study"
    return f"{study}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"


def _by_stage(runs: Iterable[PlannedRunLike]) -> dict[str, list[PlannedRunLike]]:
    stages: dict[str, list[PlannedRunLike]] = {}
    for run in sorted(runs, key=lambda r: STAGE_ORDER.index(r.stage)):
        stages.setdefault(run.stage, []).append(run)
    return stages


def describe(
    plan: Any,
    cluster: str = "local",
    max_parallel: int | None = None,
    retry_failed: bool = False,
    profile: SlurmProfile | None = None,
) -> str:
    """What `launch` would submit, without submitting: for Slurm the #SBATCH lines of each
    stage's array as submitit renders them (no cluster needed), for local the queue."""
    todo, skipped = select_runs(plan.runs, retry_failed)
    stages = _by_stage(todo)
    if not todo:
        return f"nothing to launch ({len(skipped)} runs finished or skipped)"
    if cluster in IN_PROCESS:
        slots = 1 if cluster == "debug" else max_parallel or default_max_parallel(todo)
        where = "in this process" if cluster == "debug" else f"at most {slots} at once"
        counts = ", ".join(f"{stage}: {len(runs)}" for stage, runs in stages.items())
        return (
            f"{cluster}: {len(todo)} jobs ({counts}), {where}; evaluations after their pre-training"
        )
    profile = profile or load_profile(cluster)
    folder = profile.folder(strict=False) / "<launch>" / "%j"
    launched = {run.key for run in todo}
    out = [f"slurm profile {cluster!r}: one array per stage, job folder {folder}"]
    for stage, runs in stages.items():
        params = slurm_parameters(profile, stage, max_parallel)
        held = sum(1 for r in runs if r.depends_on in launched)
        if held:
            params["dependency"] = "afterok:<pretrain array tasks>"
        script = _make_sbatch_string(
            command="<python> -u -m submitit.core._submit <folder>",
            folder=folder,
            map_count=len(runs) if len(runs) > 1 else None,
            **params,
        )
        note = f", {held} held by afterok on their own pre-training task" if held else ""
        out.append(f"\n{stage}: {len(runs)} task(s){note}")
        keep = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
        keep += [f"# setup: {ln}" for ln in profile.setup]
        out += [f"  {ln}" for ln in keep]
    return "\n".join(out)


def launch(
    plan: Any,
    cluster: str = "local",
    max_parallel: int | None = None,
    retry_failed: bool = False,
    tracking_uri: str | None = None,
    experiment_id: str | None = None,
    runs_dir: str | Path | None = None,
    profile: SlurmProfile | None = None,
    summary_stream: TextIO | None = None,
) -> LaunchReport:
    """Run the plan's runs that still need running and wait for them.

    `cluster`: `local` (a bounded queue of local processes; at most `max_parallel`, by default
    as many as the cores allow at the runs' `runtime.threads`), `debug` (one at a time inside
    this process), or a Slurm profile name (`profile` overrides the file, e.g. in tests).
    """
    todo, skipped = select_runs(plan.runs, retry_failed)
    report = LaunchReport(skipped=skipped)
    if not todo:
        return report
    uri = track.resolve_tracking_uri(tracking_uri or getattr(plan, "tracking_uri", None))
    experiment_id = (
        experiment_id
        or getattr(plan, "experiment_id", None)
        or track.init_store(uri, todo[0].scale)
    )
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    specs = {run.key: job_spec(run, root, uri, experiment_id) for run in todo}
    progress = Progress(specs=specs, waiting=list(specs))
    summary = Summary(summary_stream)
    report.launched = [spec.name for spec in specs.values()]
    try:
        if cluster in IN_PROCESS:
            folder = root / ".submitit" / _stamp(todo) / "%j"
            if cluster == "debug":
                executor: submitit.Executor = submitit.DebugExecutor(folder)
                slots = 1
            else:
                executor = submitit.LocalExecutor(folder)
                executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
                slots = max_parallel or default_max_parallel(todo)
            log.info("launching %d jobs (%s, at most %d at once)", len(specs), cluster, slots)
            _local_queue(executor, progress, slots, summary)
        else:
            profile = profile or load_profile(cluster)
            folder = profile.folder() / _stamp(todo) / "%j"
            _submit_arrays(progress, profile, folder, max_parallel)
            _slurm_wait(progress, summary)
    finally:
        summary.close()
    report.finished = [specs[k].name for k in progress.done]
    report.failed = [(specs[k].name, err) for k, err in progress.failed.items()]
    return report
