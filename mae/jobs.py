"""The callables that submitit pickles and runs: one tokenizer, pre-training or evaluation per job.

A job is stateless apart from its `JobSpec`: everything it has done lives on disk (the stage's
checkpoint in its workdir) and in MLflow (the run with its content key). So a job that starts
again -- requeued by submitit after a timeout or preemption, by an outside `scontrol requeue`, by
a node failure, or by a second `studies/run.py` after a kill -- finds its run by key, resumes it
under the same run id and continues from the latest checkpoint. Only `mae.sweep.launch` and this
module know submitit; MLflow is reached through `mae.track` only.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import submitit
import yaml

from mae import track
from mae.config import EVAL_STAGES, ExperimentConfig, flatten_config, validate_config
from mae.logger import MetricLogger, NullLogger
from mae.paths import CHECKPOINT, PROGRESS, RECONSTRUCTION

log = logging.getLogger(__name__)

LOCK = "job.lock"
END_REASON = "end_reason"  # the run tag saying why a run ended FAILED or KILLED


class JobInterrupted(BaseException):
    """SIGTERM reached the job: `scancel`, an outside `scontrol requeue`, a node going down or the
    local queue cancelling it. Raised in the training loop so that the run is closed with the
    reason before the process is killed; its last checkpoint is where the run resumes."""


def _interrupt(signum: int, frame: Any) -> None:
    raise JobInterrupted(f"received {signal.Signals(signum).name}")


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, what a run's end_reason tag and the summary show."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class JobSpec:
    """Everything one stage job needs, picklable and free of live handles.

    The parent's run id is looked up by `depends_on` when the job starts, not captured here: on
    Slurm the evaluation is submitted before its pre-training has a run.
    """

    key: str
    stage: str
    config: dict[str, Any]  # ExperimentConfig.model_dump(mode="json")
    name: str
    study: str
    scale: str
    tracking_uri: str
    experiment_id: str
    workdir: str
    labels: dict[str, Any] = field(default_factory=dict)  # table axis -> the paper's label
    depends_on: str | None = None  # an evaluation's pre-training key, a pre-training's tokenizer's
    pretrain_workdir: str | None = None  # where an evaluation's pre-training keeps its checkpoint
    tokenizer_workdir: str | None = None  # where a pre-training's tokenizer keeps its checkpoint

    @property
    def pretrain_checkpoint(self) -> Path | None:
        return Path(self.pretrain_workdir) / CHECKPOINT if self.pretrain_workdir else None

    @property
    def tokenizer_checkpoint(self) -> Path | None:
        return Path(self.tokenizer_workdir) / CHECKPOINT if self.tokenizer_workdir else None

    @property
    def is_evaluation(self) -> bool:
        return self.stage in EVAL_STAGES


def _job_environment() -> submitit.JobEnvironment | None:
    """submitit's view of the job (ids, ranks), or None when called outside a submitit job."""
    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None


def label_params(labels: dict[str, Any]) -> dict[str, str]:
    """`label.<axis>` params: the paper's value of each table axis, whatever the scale made it."""
    return {(k if k.startswith("label.") else f"label.{k}"): str(v) for k, v in labels.items()}


def job_tags(spec: JobSpec, env: submitit.JobEnvironment | None) -> dict[str, str]:
    """Tags saying where a run comes from: study, scale, its pre-training (or tokenizer), the job
    that ran it."""
    tags = {"study": spec.study, "scale": spec.scale}
    if spec.depends_on:
        tags["pretrain_key" if spec.is_evaluation else "tokenizer_key"] = spec.depends_on
    if env is not None:
        tags["executor"] = env.cluster
        if env.cluster == "slurm":
            tags["slurm_job_id"] = env.job_id
            tags["slurm_restart_count"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    return tags


@contextmanager
def exclusive(workdir: Path, name: str) -> Iterator[None]:
    """One live job per run: a run launched again while its first job still runs (a restarted
    launcher, a duplicate array task) must not write the same checkpoint and MLflow run. The
    lock dies with the process, so a killed or requeued job never blocks its successor."""
    lock = workdir / LOCK
    with lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{name} is already running in another job ({lock})") from None
        yield


class ProgressFile:
    """Passes metrics on and records the last epoch in `workdir/progress.json`, so the launcher
    can show how far each running job is without asking MLflow (or the job's own terminal).
    `details(step)` adds fields to the record: a search worker's trial and the search's share."""

    def __init__(
        self,
        inner: MetricLogger,
        workdir: Path,
        details: Callable[[int], Mapping[str, Any]] | None = None,
    ):
        self.inner, self.path, self.details = inner, workdir / PROGRESS, details

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)
        record = {"epoch": step, **(self.details(step) if self.details else {})}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.inner.set_tags(tags)


def read_progress_record(workdir: str | Path) -> dict[str, Any]:
    """What a job in `workdir` last wrote to its progress file ({} before its first epoch)."""
    try:
        record = json.loads((Path(workdir) / PROGRESS).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def read_progress(workdir: str | Path) -> int | None:
    """The last epoch a job in `workdir` reported, or None before its first."""
    try:
        return int(read_progress_record(workdir)["epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def run_stage(
    spec: JobSpec, cfg: ExperimentConfig, workdir: Path, logger: MetricLogger
) -> dict[str, float]:
    """Train or evaluate; each resumes from `workdir/checkpoint.pt` when there is one. (Imported
    here: the launcher imports this module and needs neither torch nor the models.)"""
    if spec.stage == "tokenizer":
        from mae.train.tokenizer import train_tokenizer

        return train_tokenizer(cfg, workdir, logger)
    if spec.stage == "pretrain":
        from mae.train.pretrain import pretrain

        return pretrain(cfg, workdir, logger, tokenizer_checkpoint=spec.tokenizer_checkpoint)
    from mae.evaluate import run_eval

    checkpoint = spec.pretrain_checkpoint
    if checkpoint is not None and not checkpoint.exists():
        raise FileNotFoundError(
            f"{spec.name}: the pre-training checkpoint {checkpoint} does not exist "
            f"(pre-training {spec.depends_on} has not finished)"
        )
    return run_eval(spec.stage, cfg, checkpoint, workdir, logger)


def close_run(spec: JobSpec, run_id: str, status: str, reason: str) -> None:
    """End a run FAILED or KILLED, saying why in its `end_reason` tag. A store that does not
    answer leaves the run RUNNING: planning resumes such a run."""
    try:
        track.MlflowLogger(spec.tracking_uri, run_id).set_tags({END_REASON: reason})
        track.finish_run(spec.tracking_uri, run_id, status)
    except track.TrackingError as exc:
        log.error("%s: run %s not closed %s: %s", spec.name, run_id, status, exc)


def existing_run(spec: JobSpec) -> track.RunRecord | None:
    """This run in the store, if any. A FINISHED one means Slurm requeued a job that had written
    its result: every rank reads this, so that all of them skip the stage or none does."""
    return track.find_runs(spec.tracking_uri, spec.experiment_id, [spec.key]).get(spec.key)


def close_abandoned(spec: JobSpec, reason: str) -> bool:
    """KILLED for a run still RUNNING whose job died without closing it (kill -9, a node failure,
    a cancel that came too hard); True when there was one. Planning resumes KILLED runs."""
    record = track.find_runs(spec.tracking_uri, spec.experiment_id, [spec.key]).get(spec.key)
    if record is None or record.status != "RUNNING":
        return False
    close_run(spec, record.run_id, "KILLED", reason)
    return True


class StageJob(submitit.helpers.Checkpointable):
    """One stage of one run. `checkpoint()` (inherited) resubmits the same job with the same
    spec on timeout or preemption; the MLflow run stays RUNNING in between and the next start
    resumes it from the latest checkpoint on disk."""

    def __call__(self, spec: JobSpec) -> dict[str, float]:
        # a job process is a program of its own: its log goes to submitit's stdout file (a no-op
        # when the caller configured logging, as in-process debug runs do)
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        env = _job_environment()
        track.be_patient()  # a store that goes away mid-run is waited for, for a bounded time
        if env is not None and env.num_tasks > 1:
            # one task per GPU: RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for mae.train's DDP init; every
            # rank keeps all GPUs visible and picks cuda:LOCAL_RANK
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
        if env is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # submitit's own handler ignores it
        cfg = validate_config(spec.config, source=spec.name)
        workdir = Path(spec.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if env is not None and env.global_rank != 0:  # only rank 0 writes to MLflow
            if (done := existing_run(spec)) is not None and done.status == "FINISHED":
                return {}
            return run_stage(spec, cfg, workdir, NullLogger())
        with exclusive(workdir, spec.name):
            return self._tracked(spec, cfg, workdir, env)

    def _tracked(
        self,
        spec: JobSpec,
        cfg: ExperimentConfig,
        workdir: Path,
        env: submitit.JobEnvironment | None,
    ) -> dict[str, float]:
        """Run the stage inside its MLflow run: FINISHED with its final numbers, or FAILED."""
        existing = existing_run(spec)
        if existing is not None and existing.status == "FINISHED":
            log.info("%s: run %s already finished, nothing to do", spec.name, existing.run_id)
            return {}
        run_id = self._open_run(spec, cfg, env, existing.run_id if existing else None)
        logger = track.MlflowLogger(spec.tracking_uri, run_id)
        try:
            results = run_stage(spec, cfg, workdir, ProgressFile(logger, workdir))
            logger.log_final(results)
            self._log_outputs(workdir, logger)
        except track.TrackingError:  # the store is gone: the run stays RUNNING, resumable
            raise
        except (JobInterrupted, KeyboardInterrupt) as exc:  # resumable: its checkpoint is kept
            close_run(spec, run_id, "KILLED", f"interrupted ({one_line(exc)})")
            raise
        except Exception as exc:  # NaN loss, bad data...: not resumed unless asked to retry
            close_run(spec, run_id, "FAILED", one_line(exc))
            raise
        track.finish_run(spec.tracking_uri, run_id, "FINISHED")
        log.info("%s: finished run %s: %s", spec.name, run_id, results)
        return results

    @staticmethod
    def _open_run(
        spec: JobSpec,
        cfg: ExperimentConfig,
        env: submitit.JobEnvironment | None,
        run_id: str | None,
    ) -> str:
        """Create the run, or resume the one with this key (same run id), logging its config; an
        evaluation nests under its pre-training's run."""
        parent_id = None
        if spec.depends_on and spec.is_evaluation:
            parent = track.find_runs(spec.tracking_uri, spec.experiment_id, [spec.depends_on])
            parent_id = parent[spec.depends_on].run_id if spec.depends_on in parent else None
            if parent_id is None:
                log.warning("%s: no MLflow run for pre-training %s", spec.name, spec.depends_on)
        run_id = track.open_run(
            spec.tracking_uri,
            spec.experiment_id,
            key=spec.key,
            stage=spec.stage,
            run_name=spec.name,
            params={**flatten_config(cfg), **label_params(spec.labels)},
            tags=job_tags(spec, env),
            parent_run_id=parent_id,
            run_id=run_id,
        )
        logger = track.MlflowLogger(spec.tracking_uri, run_id)
        logger.log_dict(spec.config, "config.json")
        logger.log_text(yaml.safe_dump(spec.config, sort_keys=True), "config.yaml")
        return run_id

    @staticmethod
    def _log_outputs(workdir: Path, logger: track.MlflowLogger) -> None:
        """The reconstruction grid (again, in case training resumed a finished checkpoint and
        drew nothing) and a pointer to the checkpoint, too big to copy into the artifact store."""
        picture = workdir / RECONSTRUCTION
        if picture.exists():
            logger.log_artifact(picture)
        logger.log_text(f"{(workdir / CHECKPOINT).resolve()}\n", "checkpoint.txt")


class Worker(Protocol):
    """A long-lived job the launcher runs beside stage jobs, e.g. an Optuna search worker
    (`mae.sweep.worker.SearchWorker`). The launcher reads the fields a `JobSpec` has."""

    name: str
    stage: str  # whose resources it takes (the evaluation protocol a search tunes)
    workdir: str  # where it writes `progress.json`
    config: dict[str, Any]
    depends_on: str | None

    def __call__(self) -> Any: ...

    def interrupted(self) -> None:
        """Hand back unfinished work: before a requeue (timeout, preemption) or when cancelled
        (`JobInterrupted` reaches the worker's loop)."""


class WorkerJob(submitit.helpers.Checkpointable):
    """Runs a `Worker`. On timeout or preemption the worker hands back its unfinished work (a
    search fails and re-enqueues its running trial) and the same worker is requeued; SIGTERM
    (a cancel) raises `JobInterrupted` in the worker, as in a stage job."""

    def __call__(self, worker: Worker) -> Any:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        if _job_environment() is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # submitit's own handler ignores it
        return worker()

    def checkpoint(self, worker: Worker) -> submitit.helpers.DelayedSubmission:
        worker.interrupted()
        return super().checkpoint(worker)


def job_for(spec: JobSpec | Worker) -> StageJob | WorkerJob:
    """The submitit callable that runs `spec`."""
    return StageJob() if isinstance(spec, JobSpec) else WorkerJob()
