"""Launch a plan's runs through submitit: in-process (`debug`), a bounded local queue (`local`), or
Slurm job arrays from a cluster profile `slurm/<name>.yaml`; then wait and report.

Stages form a DAG: a dVAE-target pre-training starts only after its tokenizer finished, an
evaluation only after its pre-training. Locally the queue holds them back; on Slurm each stage is
one job array and every task waits on its own parent task through an `afterok` dependency.
submitit's LocalExecutor would start every job at once (and kill it after 2 minutes), so the local
queue submits one job per free slot.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.local.debug import DebugJob
from submitit.slurm.slurm import SlurmJob

from mae import track
from mae.jobs import JobSpec, Worker, close_abandoned, job_for, one_line
from mae.paths import runs_dir as default_runs_dir
from mae.sweep.plan import Plan, PlannedRun, stage_noun
from mae.sweep.profile import (
    IN_PROCESS,
    SlurmProfile,
    check_batches,
    load_profile,
    render_sbatch,
    slurm_parameters,
)
from mae.sweep.progress import STAGE_ORDER, Progress, Summary

log = logging.getLogger(__name__)

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # local jobs run to the end; submitit's default is 2 min
LOCAL_POLL_S = 0.25
SLURM_POLL_S = 3.0
CANCEL_GRACE_S = 30.0  # after Ctrl-C, how long cancelled jobs get to close their own runs


# --------------------------------------------------------------------------- selecting runs


@dataclass
class LaunchReport:
    """What a launch did: names launched and finished, (name, error) failed, (name, why) skipped."""

    launched: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # cancelled or left running by Ctrl-C

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


def select_runs(
    runs: Sequence[PlannedRun], retry_failed: bool = False
) -> tuple[list[PlannedRun], list[tuple[str, str]]]:
    """Runs to launch (new, resumable, failed when retried) and (name, why) for the others; a
    run whose parent (pre-training, tokenizer) will not run is skipped with it."""
    by_key = {run.key: run for run in runs}
    todo: list[PlannedRun] = []
    skipped: list[tuple[str, str]] = []
    blocked: dict[str, str] = {}
    for run in sorted(runs, key=lambda r: STAGE_ORDER.index(r.stage)):
        parent = by_key.get(run.depends_on) if run.depends_on else None
        if run.status == "finished":
            skipped.append((run.name, "already finished"))
        elif run.status == "unavailable":
            skipped.append((run.name, f"unavailable: {run.reason or 'not available'}"))
            blocked[run.key] = f"its {stage_noun(run.stage)} {run.name} is unavailable"
        elif run.status == "failed" and not retry_failed:
            skipped.append((run.name, "failed before; rerun with --retry-failed"))
            blocked[run.key] = f"its {stage_noun(run.stage)} {run.name} failed before"
        elif parent is not None and parent.key in blocked:
            skipped.append((run.name, blocked[parent.key]))
        else:
            todo.append(run)
    return todo, skipped


def check_data(runs: Iterable[PlannedRun]) -> None:
    """Refuse runs whose data set is not on disk before any job starts: otherwise each job fails
    on it after its start-up, and every failed run then waits for --retry-failed."""
    from mae.data.sets import check_stage_data  # torch: paid only when jobs start here

    for run in runs:
        check_stage_data(run.config, run.stage, run.name)


def workdir_for(runs_root: Path, scale: str, stage: str, key: str) -> Path:
    """`<runs>/<scale>/<stage>/<key[:16]>`: checkpoints and pictures of one run."""
    return Path(runs_root) / scale / stage / key[:16]


def job_spec(run: PlannedRun, runs_root: Path, tracking_uri: str, experiment_id: str) -> JobSpec:
    parent = run.depends_on
    return JobSpec(
        key=run.key,
        stage=run.stage,
        config=run.config.model_dump(mode="json"),
        name=run.name,
        study=run.study,
        scale=run.scale,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        workdir=str(workdir_for(runs_root, run.scale, run.stage, run.key)),
        labels=dict(run.labels),
        depends_on=parent,
        pretrain_workdir=(
            str(workdir_for(runs_root, run.scale, "pretrain", parent))
            if parent and run.stage != "pretrain"
            else None
        ),
        tokenizer_workdir=(
            str(workdir_for(runs_root, run.scale, "tokenizer", parent))
            if parent and run.stage == "pretrain"
            else None
        ),
    )


def threads_per_job(runs: Iterable[PlannedRun]) -> int:
    """The most CPU threads any of the runs asks for (all cores when a run does not say)."""
    cores = len(os.sched_getaffinity(0))
    asked = [run.config.runtime.threads or cores for run in runs]
    return max(asked, default=1)


def default_max_parallel(runs: Sequence[PlannedRun]) -> int:
    return max(1, len(os.sched_getaffinity(0)) // threads_per_job(runs))


# --------------------------------------------------------------------------- waiting and summary


def _one_line(exc: BaseException) -> str:
    """`Type: message` of an exception; for a remote job's, the last line of its traceback
    (submitit puts the job's traceback between two dashed lines, then where the logs are)."""
    if not isinstance(exc, FailedJobError | UncompletedJobError):
        return one_line(exc)
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    rules = [i for i, ln in enumerate(lines) if set(ln.strip()) == {"-"}]
    trace = lines[rules[0] + 1 : rules[-1]] if len(rules) >= 2 else lines
    tail = next((ln for ln in reversed(trace) if not ln.startswith((" ", "-"))), None)
    return (tail or type(exc).__name__).strip()


@dataclass(frozen=True)
class Outcome:
    """How a job ended: `error` None when it returned; `died` when it ended without a result
    (killed, cancelled, its node lost), so that its run may still be RUNNING in MLflow."""

    error: str | None = None
    died: bool = False


def job_outcome(job: submitit.Job[Any]) -> Outcome:
    if isinstance(job, DebugJob) or job.paths.result_pickle.exists() or job.state == "COMPLETED":
        exc = job.exception()
        return Outcome(None if exc is None else _one_line(exc))
    why = f"job {job.job_id} died without a result (state {job.state}); log: {job.paths.stderr}"
    return Outcome(why, died=True)


def _ended(progress: Progress, key: str, outcome: Outcome, restarts: int) -> None:
    """Record a job's end. One that died has its run closed KILLED (resumable) if nobody did,
    and is started again while `restarts` allows (the local queue; Slurm requeues by itself)."""
    spec = progress.specs[key]
    if outcome.died and isinstance(spec, JobSpec):  # a worker's trials: heartbeats, retries
        close_abandoned(spec, outcome.error or "died")
    again = outcome.died and progress.restarts[key] < restarts
    progress.record(key, outcome.error, restart=again)


# --------------------------------------------------------------------------- executors


def _local_queue(
    executor: submitit.Executor,
    progress: Progress,
    max_parallel: int,
    summary: Summary,
    restarts: int,
) -> None:
    """Keep at most `max_parallel` jobs running; start the next one when one ends, and start a
    job that died without a result (kill -9, the OOM killer) again up to `restarts` times."""
    while progress.waiting or progress.running:
        progress.fail_dependents()
        for key in progress.ready()[: max(0, max_parallel - len(progress.running))]:
            progress.waiting.remove(key)
            spec = progress.specs[key]
            progress.start(key, executor.submit(job_for(spec), spec))
        summary.show(progress.counts(), progress.epochs(), progress.overview())
        for key, job in list(progress.running.items()):
            # a debug job runs here, inside job_outcome; its done() would open pdb on a failure
            if isinstance(job, DebugJob) or job.done():
                _ended(progress, key, job_outcome(job), restarts)
        if progress.running:
            time.sleep(LOCAL_POLL_S)
    summary.show(progress.counts(), overview=progress.overview())


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
    """One array per stage, in stage order. A pre-training or evaluation array is submitted held
    by `afterok` on every parent task it needs (tokenizers, pre-trainings); each task is then
    narrowed to its own parent's task, so a failed parent holds back only its own runs."""
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
                specs = [progress.specs[k] for k in keys]
                jobs = [executor.submit(job_for(spec), spec) for spec in specs]
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
            progress.running[key] = job  # submitted; running once sacct says so
            own = f"afterok:{parents[key]}" if key in parents else ""
            if parents and own != params["dependency"]:
                _set_dependency(job.job_id, own)
        log.info("submitted %s array %s (%d tasks)", stage, jobs[0].job_id.split("_")[0], len(jobs))


def _slurm_wait(progress: Progress, summary: Summary) -> None:
    """Poll sacct (one call for all jobs) until every job ended; cancel the runs of a failed
    parent (Slurm would hold them forever as DependencyNeverSatisfied)."""
    while progress.running:
        SlurmJob.watcher.update()
        states = {
            k: j.watcher.get_state(j.job_id, mode="cache") for k, j in progress.running.items()
        }
        for key, job in list(progress.running.items()):
            if states[key] == "RUNNING":
                progress.mark_running(key)
            if job.watcher.is_done(job.job_id, mode="cache") or job.paths.result_pickle.exists():
                _ended(progress, key, job_outcome(job), restarts=0)  # Slurm requeues by itself
        for job in progress.fail_dependents():
            job.cancel(check=False)
        summary.show(progress.counts(states), progress.epochs(), progress.overview())
        if progress.running:
            time.sleep(SLURM_POLL_S)
    summary.show(progress.counts(), overview=progress.overview())


def _interrupted(progress: Progress, leave_running: bool) -> list[str]:
    """Ctrl-C: launch nothing more; cancel the running jobs and close their runs KILLED (they
    resume next time), or leave them running. Returns the names of the jobs concerned."""
    names = [progress.specs[key].name for key in progress.running]
    if leave_running:
        log.warning("interrupted: %d job(s) left running: %s", len(names), ", ".join(names))
        return names
    log.warning("interrupted: cancelling %d running job(s)", len(names))
    jobs = [job for job in progress.running.values() if not isinstance(job, DebugJob)]
    for job in jobs:
        job.cancel(check=False)
    deadline = time.monotonic() + CANCEL_GRACE_S  # each job closes its own run if it can
    while time.monotonic() < deadline and not all(job.done(force_check=True) for job in jobs):
        time.sleep(1.0)
    for spec in map(progress.specs.get, progress.running):
        if isinstance(spec, JobSpec):  # a worker hands its trial back itself
            close_abandoned(spec, "cancelled: the launch was interrupted (Ctrl-C)")
    return names


# --------------------------------------------------------------------------- entry points


def _stamp(name: str) -> str:
    """A fresh submitit folder per launch: Slurm job ids restart after a controller wipe, and a
    stale result pickle under a reused id would pass for a finished job."""
    return f"{name}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"


def _by_stage(runs: Iterable[PlannedRun]) -> dict[str, list[PlannedRun]]:
    stages: dict[str, list[PlannedRun]] = {}
    for run in sorted(runs, key=lambda r: STAGE_ORDER.index(r.stage)):
        stages.setdefault(run.stage, []).append(run)
    return stages


def describe(
    plan: Plan,
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
        order = "pre-trainings after their tokenizer, " if "tokenizer" in stages else ""
        return (
            f"{cluster}: {len(todo)} jobs ({counts}), {where}; "
            f"{order}evaluations after their pre-training"
        )
    profile = profile or load_profile(cluster)
    check_batches(profile, [(run.stage, run.config) for run in todo])
    folder = profile.folder(strict=False) / "<launch>" / "%j"
    launched = {run.key for run in todo}
    out = [f"slurm profile {cluster!r}: one array per stage, job folder {folder}"]
    for stage, runs in stages.items():
        params = slurm_parameters(profile, stage, max_parallel)
        held = sum(1 for r in runs if r.depends_on in launched)
        parent = "tokenizer" if stage == "pretrain" else "pretrain"
        if held:
            params["dependency"] = f"afterok:<{parent} array tasks>"
        note = f", {held} held by afterok on their own {stage_noun(parent)} task" if held else ""
        out.append(f"\n{stage}: {len(runs)} task(s){note}")
        keep = render_sbatch(params, folder, len(runs))
        keep += [f"# setup: {ln}" for ln in profile.setup]
        out += [f"  {ln}" for ln in keep]
    return "\n".join(out)


def launch(
    plan: Plan,
    cluster: str = "local",
    max_parallel: int | None = None,
    retry_failed: bool = False,
    tracking_uri: str | None = None,
    experiment_id: str | None = None,
    runs_dir: str | Path | None = None,
    profile: SlurmProfile | None = None,
    summary_stream: TextIO | None = None,
    max_restarts: int = 3,
    leave_running: bool = False,
) -> LaunchReport:
    """Run the plan's runs that still need running and wait for them.

    `cluster`: `local` (a bounded queue of local processes; at most `max_parallel`, by default
    as many as the cores allow at the runs' `runtime.threads`), `debug` (one at a time inside
    this process), or a Slurm profile name (`profile` overrides the file, e.g. in tests).
    A local job that dies without a result is started again up to `max_restarts` times, from its
    checkpoint. Ctrl-C stops launching and cancels the running jobs (their runs end KILLED and
    resume next time), or with `leave_running` lets them finish on their own.
    """
    todo, skipped = select_runs(plan.runs, retry_failed)
    report = LaunchReport(skipped=skipped)
    if not todo:
        return report
    if cluster not in IN_PROCESS:  # bad input fails before anything is submitted
        profile = profile or load_profile(cluster)
        check_batches(profile, [(run.stage, run.config) for run in todo])
    else:  # a Slurm node may mount other paths than this host: its jobs look for themselves
        check_data(todo)
    uri = track.resolve_tracking_uri(tracking_uri or plan.tracking_uri)
    experiment_id = experiment_id or plan.experiment_id or track.init_store(uri, plan.scale)
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    specs = {run.key: job_spec(run, root, uri, experiment_id) for run in todo}
    if cluster in IN_PROCESS:
        max_parallel = max_parallel or default_max_parallel(todo)
    done = run_jobs(
        specs,
        plan.study,
        cluster,
        max_parallel,
        root,
        profile,
        summary_stream,
        max_restarts,
        leave_running,
    )
    done.skipped = skipped
    return done


def run_jobs(
    specs: dict[str, JobSpec | Worker],
    name: str,
    cluster: str = "local",
    max_parallel: int | None = None,
    runs_dir: Path | None = None,
    profile: SlurmProfile | None = None,
    summary_stream: TextIO | None = None,
    max_restarts: int = 3,
    leave_running: bool = False,
) -> LaunchReport:
    """Submit jobs (stage jobs and workers, by key; evaluations wait for their pre-training when
    it is among them) and wait for them: a bounded local queue of at most `max_parallel` (1 when
    unset), this process (`debug`), or one Slurm array per stage (`max_parallel` caps each)."""
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    progress = Progress(specs=specs, waiting=list(specs))
    summary = Summary(summary_stream)
    report = LaunchReport(launched=[spec.name for spec in specs.values()])
    try:
        if cluster in IN_PROCESS:
            folder = root / ".submitit" / _stamp(name) / "%j"
            if cluster == "debug":
                executor: submitit.Executor = submitit.DebugExecutor(folder)
                slots = 1
            else:
                executor = submitit.LocalExecutor(folder)
                executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
                slots = max_parallel or 1
            log.info("launching %d jobs (%s, at most %d at once)", len(specs), cluster, slots)
            _local_queue(executor, progress, slots, summary, max_restarts)
        else:
            profile = profile or load_profile(cluster)
            folder = profile.folder() / _stamp(name) / "%j"
            _submit_arrays(progress, profile, folder, max_parallel)
            _slurm_wait(progress, summary)
    except KeyboardInterrupt:
        summary.close()
        report.interrupted = _interrupted(progress, leave_running)
    finally:
        summary.close()
    report.finished = [specs[k].name for k in progress.done]
    report.failed = [(specs[k].name, err) for k, err in progress.failed.items()]
    return report
