"""A search worker: one job (a local process or a Slurm array task) that joins the Optuna study
and runs trials until the search has its number of trials.

A trial is one evaluation of the pre-trained encoder with suggested parameters, run by
`mae.evaluate` with a logger (`TrialReporter`) that logs each epoch to the trial's MLflow run,
reports the validation metric to Optuna and raises `optuna.TrialPruned` when the pruner says so.
The trial ends after its last epoch's validation, before the loop would measure the test split:
the search never sees test numbers; only the best parameters' own evaluation run does.

Each trial has a nested MLflow run under the search's run: FINISHED when complete, KILLED with
tag `trial_state=PRUNED` when pruned, FAILED otherwise (tag `trial_state=FAIL`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mae import track
from mae.config import flatten_config, validate_config
from mae.jobs import END_REASON, JobInterrupted, ProgressFile, one_line
from mae.logger import MetricLogger
from mae.overrides import apply_overrides
from mae.sweep.search_spec import Choices, Heartbeat, Pruner, Range, Sampler
from mae.sweep.search_study import (
    build_pruner,
    build_sampler,
    build_storage,
    distributions,
    fail_and_retry,
    fail_stale_trials,
    suggest,
    trial_key,
)

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3  # a worker whose trials keep crashing stops instead of looping
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # trial -> MLflow run


class LastEpoch(Exception):  # noqa: N818 -- a signal, not an error
    """Raised by the reporter after the trial's last validation: the trial is over."""

    def __init__(self, value: float):
        super().__init__(value)
        self.value = value


class TrialReporter:
    """A `MetricLogger` for one trial: passes each epoch on, reports the validation metric to
    Optuna, prunes, and stops the loop after the last epoch (before any test-split number)."""

    def __init__(self, inner: MetricLogger, trial: optuna.Trial, key: str, epochs: int):
        self.inner, self.trial, self.key, self.epochs = inner, trial, key, epochs
        self.last: tuple[int, float] | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)
        value = float(metrics[self.key])
        self.last = (step, value)
        self.trial.report(value, step)
        if step >= self.epochs:
            raise LastEpoch(value)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {step}: {self.key} {value:.2f}")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.inner.set_tags(tags)


def retried_from(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of the trial this one retries (Optuna's retry callback records it in the
    trial's system attributes, which only the frozen trial shows)."""
    frozen = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    mine = next((t for t in frozen if t.number == trial.number), None)
    return mine.system_attrs.get("failed_trial") if mine is not None else None


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards `n_trials`: complete or pruned."""
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def _worker_id() -> str:
    """Where a trial runs: the Slurm array task (`<array>_<task>`), the job, or host:pid."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    return env.get("SLURM_JOB_ID") or f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SearchWorker:
    """Everything a worker needs, picklable. The first five fields are what the launcher reads
    (as for a `JobSpec`): the worker takes the resources of the protocol it tunes."""

    name: str
    stage: str
    workdir: str
    config: dict[str, Any]  # the base evaluation config (ExperimentConfig as JSON)
    depends_on: str | None
    search: str
    scale: str
    study_name: str
    storage_url: str
    heartbeat: Heartbeat
    sampler: Sampler
    sampler_seed: int
    pruner: Pruner
    space: dict[str, Range | Choices]
    kinds: dict[str, type | None]  # int or float fields of the protocol section
    metric: str  # e.g. finetune/val_top1
    n_trials: int
    max_epochs: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    pretrain_key: str
    pretrain_checkpoint: str
    trials_dir: str
    _current: tuple[int, str] | None = field(default=None, repr=False)  # trial number, run id
    _finished_at_start: int = field(default=0, repr=False)  # the search's, when this one began

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_current": None}

    # ----------------------------------------------------------------------- the loop

    def __call__(self) -> dict[str, int]:
        study = optuna.create_study(
            storage=build_storage(self.storage_url, self.heartbeat),
            sampler=build_sampler(self.sampler, self.space, self.sampler_seed),
            pruner=build_pruner(self.pruner, self.max_epochs),
            study_name=self.study_name,
            direction="maximize",
            load_if_exists=True,
        )
        self._finished_at_start = finished_trials(study)
        ran = failures = 0
        while not self.enough(study):
            try:
                study.optimize(lambda trial: self.objective(study, trial), n_trials=1)
                failures = 0
            except Exception as exc:
                failures += 1
                if failures >= MAX_FAILURES_IN_A_ROW:
                    raise RuntimeError(f"{failures} trials in a row failed; last: {exc}") from exc
            ran += 1
        log.info("%s: ran %d trials; the search has enough", self.name, ran)
        return {"trials": ran}

    def enough(self, study: optuna.Study) -> bool:
        """Finished and running trials reach the target (stale ones are failed first, and so
        retried). Two workers asking at the same instant may still overshoot by one."""
        fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        busy = TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING
        return sum(state in busy for state in states) >= self.n_trials

    def progress_details(
        self, study: optuna.Study, number: int, epochs: int, step: int
    ) -> dict[str, Any]:
        """For the launcher's line: the trial this worker runs, its epochs, and the share of the
        search's remaining work (as it stood when this worker began) now done: trials finished
        since, plus this trial's share. Trials differ in length, so a worker's epoch alone
        would extrapolate to an ETA hours off."""
        todo = max(1, self.n_trials - self._finished_at_start)
        done = finished_trials(study) - self._finished_at_start + step / max(1, epochs)
        return {"trial": number, "epochs": epochs, "fraction": done / todo}  # the reader clamps

    def interrupted(self) -> None:
        """Timeout or preemption: fail the running trial and enqueue its retry, which resumes
        the trial's checkpoint (heartbeats would do the same, later, and only on RDB). This runs
        in submitit's signal handler, perhaps in the middle of a storage call of the trial: it
        opens a storage (and database session) of its own."""
        current, self._current = self._current, None
        if current is None:
            return
        number, run_id = current
        storage = build_storage(self.storage_url, self.heartbeat)
        fail_and_retry(
            optuna.load_study(study_name=self.study_name, storage=storage), number, self.heartbeat
        )
        reason = "interrupted (timeout, preemption or cancel): retried from its checkpoint"
        track.MlflowLogger(self.tracking_uri, run_id).set_tags(
            {"trial_state": "FAIL", END_REASON: reason}
        )
        track.finish_run(self.tracking_uri, run_id, "FAILED")

    # ----------------------------------------------------------------------- one trial

    def objective(self, study: optuna.Study, trial: optuna.Trial) -> float:
        space = distributions(self.space, self.kinds)
        params = {name: suggest(trial, name, dist) for name, dist in space.items()}
        overrides = {f"{self.stage}.{name}": value for name, value in params.items()}
        cfg = validate_config(apply_overrides(self.config, overrides), f"trial {trial.number}")
        origin = retried_from(study, trial)
        workdir = Path(self.trials_dir) / f"trial{origin if origin is not None else trial.number}"
        run_id = self._open_run(trial, cfg, params, origin)
        trial.set_user_attr("mlflow_run_id", run_id)
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        epochs = getattr(cfg, self.stage).epochs
        logger = ProgressFile(
            track.MlflowLogger(self.tracking_uri, run_id),
            Path(self.workdir),
            lambda step: self.progress_details(study, trial.number, epochs, step),
        )
        reporter = TrialReporter(logger, trial, self.metric, epochs)
        self._current = (trial.number, run_id)
        try:
            value = self._evaluate(cfg, workdir, reporter)
        except optuna.TrialPruned as exc:
            self._close(run_id, "PRUNED", reporter, workdir, f"pruned at {exc}")
            raise
        except FloatingPointError as exc:  # a diverging recipe is a bad result, not a crash
            self._close(run_id, "PRUNED", reporter, workdir, f"diverged: {exc}")
            raise optuna.TrialPruned(f"diverged: {exc}") from exc
        except JobInterrupted:  # cancelled: hand the trial back before the job ends
            self.interrupted()
            raise
        except (Exception, KeyboardInterrupt) as exc:
            self._close(run_id, "FAIL", reporter, None, one_line(exc))
            raise
        finally:
            self._current = None
        self._close(run_id, "COMPLETE", reporter, workdir)
        return value

    def _evaluate(self, cfg: Any, workdir: Path, reporter: TrialReporter) -> float:
        from mae.evaluate import run_eval  # torch and the models only in the job process

        try:
            numbers = run_eval(self.stage, cfg, Path(self.pretrain_checkpoint), workdir, reporter)
        except LastEpoch as end:
            return end.value
        return float(numbers[self.metric])  # a checkpoint that had finished: its numbers

    def _open_run(
        self, trial: optuna.Trial, cfg: Any, params: Mapping[str, Any], origin: int | None
    ) -> str:
        tags = {
            "study": self.search,
            "search": self.search,
            "scale": self.scale,
            "protocol": self.stage,
            "pretrain_key": self.pretrain_key,
            "optuna_study": self.study_name,
            "trial_number": str(trial.number),
            "trial_state": "RUNNING",
            "worker": _worker_id(),
        }
        if origin is not None:
            tags["retry_of"] = str(origin)
        return track.open_run(
            self.tracking_uri,
            self.experiment_id,
            key=trial_key(self.study_name, trial.number),
            stage="trial",
            run_name=f"{self.search}/trial{trial.number}",
            params={**flatten_config(cfg), **{f"search.{k}": v for k, v in params.items()}},
            tags=tags,
            parent_run_id=self.parent_run_id,
        )

    def _close(
        self,
        run_id: str,
        state: str,
        reporter: TrialReporter,
        workdir: Path | None,
        reason: str | None = None,
    ) -> None:
        """Record the trial's end in its run (and why, for a pruned or failed one); a finished
        trial's checkpoint is not needed again (the best parameters are evaluated by a run of
        their own), a failed one's is kept for its retry."""
        tags = {"trial_state": state, **({END_REASON: reason} if reason else {})}
        if reporter.last is not None:
            step, value = reporter.last
            logger = track.MlflowLogger(self.tracking_uri, run_id)
            logger.log_final({self.metric: value, "epochs_run": step})
            tags["last_epoch"] = str(step)
        track.MlflowLogger(self.tracking_uri, run_id).set_tags(tags)
        track.finish_run(self.tracking_uri, run_id, STATUS[state])
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
