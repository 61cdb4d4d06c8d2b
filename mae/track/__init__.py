"""Every MLflow call of the project: store URIs, experiments, runs opened or resumed by content key,
metric logging, and the query that turns an experiment into a DataFrame for the tables.

Only `mlflow.MlflowClient(uri)` is used, never the fluent API and its process-global active run, so
jobs, the planner and the report can talk to several runs and stores from one process.

Every call goes through `mae.track.patience.PatientClient`: in jobs, a store that goes away
(a server restarted, a database failing over, a busy SQLite file) is waited for, for a bounded
time, before the call fails with the store's URI.

MLflow and pandas are imported by the functions that use them, not here: planning a study on a SQL
store reads it through `mae.track.tables` and never pays their imports (about 4 s and 0.6 s).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mae.paths import project_root, sqlite_path
from mae.track import tables
from mae.track.patience import PATIENCE_ENV as PATIENCE_ENV
from mae.track.patience import PatientClient, TrackingError
from mae.track.patience import be_patient as be_patient

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "mae-ablate/"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
METRIC_BATCH = 1000  # MLflow's limit of metrics per log_batch call
KEYS_PER_QUERY_LIMIT = 8  # above this many keys, one scan of the experiment beats one query per key
PAGE_SIZE = 50_000  # MLflow's largest search_runs page
_HEALTH_TIMEOUT_S = 5.0
BASE_COLUMNS = ("run_id", "run_name", "status", "start_time", "end_time", "duration_s")
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # stores runs_frame reads with SQL


@dataclass(frozen=True)
class RunRecord:
    """What planning needs to know about an existing run."""

    run_id: str
    key: str
    status: str
    stage: str | None
    study: str | None
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int = 0  # ms since the epoch


# --------------------------------------------------------------------------- store and experiment


def resolve_tracking_uri(uri: str | None = None, project_dir: str | Path | None = None) -> str:
    """The argument, else `MLFLOW_TRACKING_URI`, else `sqlite:///<project>/mlruns.db`."""
    if uri:
        return uri
    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        return env
    root = Path(project_dir) if project_dir else project_root()
    return f"sqlite:///{root.resolve() / 'mlruns.db'}"


def experiment_name(scale: str) -> str:
    return f"{EXPERIMENT_PREFIX}{scale}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: `mlartifacts/` next to a SQLite file, the
    project's `mlartifacts/` for other databases, the server's own choice for an HTTP store."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    db = sqlite_path(uri)
    base = db.resolve().parent if db else project_root()
    return (base / "mlartifacts").as_uri()


def _check_reachable(uri: str) -> None:
    """Fail fast on a URI MLflow cannot use (its own message is a paragraph) and on a server that
    does not answer (MLflow's client retries for minutes)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme not in (*SQL_SCHEMES, "http", "https", "databricks"):
        raise TrackingError(
            f"bad tracking URI {uri}: use sqlite:///path/to/mlruns.db, an http(s):// MLflow server "
            "or a database URL (postgresql://, mysql://, mssql://)"
        )
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_HEALTH_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"cannot reach the MLflow server at {uri}: {reason}") from None


def _client(uri: str) -> PatientClient:
    return PatientClient(uri)


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """First contact with a store: whatever MLflow, SQLAlchemy or the network raise becomes one
    TrackingError line that the CLIs print before exiting with 2 (an MlflowException's text is
    its message)."""
    try:
        yield
    except Exception as exc:
        raise TrackingError(f"cannot use tracking store {uri}: {exc}") from None


def init_store(uri: str, scale: str) -> str:
    """Create the store's schema and the scale's experiment (once, before any job starts: fresh
    SQLite stores race on schema migration) and return the experiment id."""
    from mlflow.exceptions import MlflowException

    _check_reachable(uri)
    db = sqlite_path(uri)
    if db is not None and not db.resolve().parent.is_dir():
        raise TrackingError(
            f"bad tracking URI {uri}: directory {db.resolve().parent} does not exist"
        )
    name = experiment_name(scale)
    with _store_errors(uri):
        client = _client(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri))
        except MlflowException:  # another process created it in between
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def find_experiment(uri: str, scale: str) -> str | None:
    """The scale's experiment id, or None when nothing was ever tracked for it."""
    _check_reachable(uri)
    with _store_errors(uri):
        if _is_sql(uri):
            return tables.experiment_id(uri, experiment_name(scale))
        experiment = _client(uri).get_experiment_by_name(experiment_name(scale))
    return experiment.experiment_id if experiment is not None else None


def tracked_scales(uri: str) -> list[str]:
    """Scales that have an experiment in this store."""
    _check_reachable(uri)
    with _store_errors(uri):
        experiments = _client(uri).search_experiments(
            filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'"
        )
    return sorted(e.name.removeprefix(EXPERIMENT_PREFIX) for e in experiments)


# --------------------------------------------------------------------------- runs by content key


def _search(uri: str, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    from mlflow.entities import ViewType

    client, runs, token = _client(uri), [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=PAGE_SIZE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _record(run: Run) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(
        run_id=run.info.run_id,
        key=tags.get("content_key", ""),
        status=run.info.status,
        stage=tags.get("stage"),
        study=tags.get("study"),
        tags=tags,
        start_time=run.info.start_time or 0,
    )


def _keyed_record(run: dict[str, Any]) -> RunRecord:
    tags = run["tags"]
    return RunRecord(
        key=tags.get("content_key", ""), stage=tags.get("stage"), study=tags.get("study"), **run
    )


def _preferred(a: RunRecord, b: RunRecord) -> RunRecord:
    """Of two runs with one key: a FINISHED one, then the newest."""
    rank_a = (a.status == "FINISHED", a.start_time)
    rank_b = (b.status == "FINISHED", b.start_time)
    return a if rank_a >= rank_b else b


def find_runs(uri: str, experiment_id: str, keys: Iterable[str]) -> dict[str, RunRecord]:
    """Existing runs by content key (tag `content_key`); keys without a run are absent.

    MLflow's search grammar has no IN for tags, so a few keys are one equality query each and
    many keys are one read of the experiment, filtered here; where the store is a database, many
    keys are one SQL read of just their runs (`tables.keyed_runs`).
    """
    wanted = set(keys)
    if not wanted:
        return {}
    if len(wanted) <= KEYS_PER_QUERY_LIMIT:
        records = [
            _record(run)
            for key in sorted(wanted)
            for run in _search(uri, [experiment_id], f"tags.content_key = '{key}'")
        ]
    elif _is_sql(uri):
        records = [_keyed_record(run) for run in tables.keyed_runs(uri, experiment_id, wanted)]
    else:
        records = [_record(run) for run in _search(uri, [experiment_id])]
    found: dict[str, RunRecord] = {}
    for record in records:
        if record.key in wanted:
            found[record.key] = (
                _preferred(found[record.key], record) if record.key in found else record
            )
    return found


def git_commit(project_dir: str | Path | None = None) -> str:
    """`git rev-parse HEAD` of the project, 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_dir or project_root(),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _log_params(client: PatientClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    entries = [Param(k, v) for k, v in params.items()]
    for chunk in _chunks(entries, PARAM_BATCH):
        client.log_batch(run_id, params=chunk)


def open_run(
    uri: str,
    experiment_id: str,
    *,
    key: str,
    stage: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> str:
    """Resume the run `run_id` (or the run holding `key`) and set it RUNNING, else create it with
    `params` and the standard tags; return its id.

    Params are immutable in MLflow: on resume only params the run lacks are added, and values
    that differ from the logged ones are reported, not re-logged.
    """
    from mlflow.entities import RunTag

    client = _client(uri)
    all_tags = {
        **{k: str(v) for k, v in tags.items()},
        "content_key": key,
        "stage": stage,
        "git_commit": git_commit(),
        "mlflow.runName": run_name,
    }
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    str_params = {k: str(v) for k, v in params.items()}
    if run_id is None and (existing := find_runs(uri, experiment_id, [key]).get(key)):
        run_id = existing.run_id
    if run_id is None:
        run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        _log_params(client, run.info.run_id, str_params)
        return run.info.run_id
    logged = client.get_run(run_id).data.params
    differing = sorted(k for k, v in str_params.items() if k in logged and logged[k] != v)
    if differing:
        log.warning(
            "run %s keeps its logged params %s (MLflow params are immutable)",
            run_id,
            ", ".join(differing),
        )
    _log_params(client, run_id, {k: v for k, v in str_params.items() if k not in logged})
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
    client.update_run(run_id, status="RUNNING")
    return run_id


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The latest value of every metric of one run."""
    return dict(_client(uri).get_run(run_id).data.metrics)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
    _client(uri).set_terminated(run_id, status=status)


class MlflowLogger:
    """A `mae.logger.MetricLogger` writing into one MLflow run."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._client = _client(uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for chunk in _chunks(entries, METRIC_BATCH):
            self._client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_final(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """The run's result under `final/<name>`: search_runs reports the latest value of a metric,
        so tables read these keys instead of a per-epoch series."""
        self.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._client.log_dict(self.run_id, dict(data), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)


# --------------------------------------------------------------------------- query for reports


def _row(run: Run) -> dict[str, Any]:
    info, data = run.info, run.data
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }
    row.update({f"tags.{k}": v for k, v in data.tags.items()})
    row.update({f"params.{k}": v for k, v in data.params.items()})
    row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
    return row


def _is_sql(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES


def _frame_from_search(uri: str, experiment_id: str) -> pd.DataFrame:
    import pandas as pd

    runs = _search(uri, [experiment_id])
    columns = None if runs else [c for c in BASE_COLUMNS if c != "duration_s"]
    return pd.DataFrame([_row(run) for run in runs], columns=columns)


def runs_frame(uri: str, scale: str, stages: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per run of the scale's experiment: run_id, run_name, status, start/end time (UTC),
    duration_s, and `tags.*`, `params.*`, `metrics.*` columns (latest values; results are under
    `metrics.final/...`). SQL stores are read in four queries, others with one paged search_runs."""
    import pandas as pd

    experiment_id = find_experiment(uri, scale)
    if experiment_id is None:
        frame = pd.DataFrame(columns=[c for c in BASE_COLUMNS if c != "duration_s"])
    elif _is_sql(uri):
        frame = tables.runs(uri, experiment_id)
    else:
        frame = _frame_from_search(uri, experiment_id)
    if stages is not None:
        frame = frame[frame.get("tags.stage", pd.Series(index=frame.index)).isin(list(stages))]
    frame = frame.reset_index(drop=True)
    frame.insert(5, "duration_s", (frame["end_time"] - frame["start_time"]) / 1000)
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    return frame
