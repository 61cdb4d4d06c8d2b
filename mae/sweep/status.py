"""A plan's statuses from the tracking store: which of its runs are finished, resumable or failed,
and which another study tracked first. Planning reads a store but never creates one."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from mae.paths import sqlite_path

if TYPE_CHECKING:  # plan.py imports this module: the types only, no cycle at run time
    from mae.sweep.plan import Plan

RunStatus = Literal["new", "finished", "resumable", "failed", "unavailable"]
# MLflow run status -> plan status. Anything not finished or failed was interrupted: resume it
# (jobs find their checkpoint by content key).
MLFLOW_STATUS: dict[str, RunStatus] = {
    "FINISHED": "finished",
    "FAILED": "failed",
    "RUNNING": "resumable",
    "SCHEDULED": "resumable",
    "KILLED": "resumable",
}


def store_exists(uri: str) -> bool:
    """Planning reads a store but never creates one (opening a SQLite URI creates its file)."""
    db = sqlite_path(uri)
    return db is None or db.exists()


def with_status(plan: Plan) -> Plan:
    """Statuses from the tracking store: runs found by content key are finished, resumable or
    failed, and a run first tracked by another study is shared with it."""
    from mae import track  # MLflow only when a store is asked for

    uri = plan.tracking_uri
    if uri is None or not store_exists(uri):
        return plan
    experiment_id = plan.experiment_id or track.find_experiment(uri, plan.scale)
    if experiment_id is None:
        return plan
    records = track.find_runs(
        uri, experiment_id, [r.key for r in plan.runs if r.status != "unavailable"]
    )
    runs = []
    for run in plan.runs:
        record = records.get(run.key)
        if record is not None:
            shared = (record.study,) if record.study and record.study != plan.study else ()
            run = replace(
                run,
                status=MLFLOW_STATUS.get(record.status, "resumable"),
                run_id=record.run_id,
                shared_with=tuple(dict.fromkeys((*run.shared_with, *shared))),
            )
        runs.append(run)
    return replace(plan, runs=runs, experiment_id=experiment_id)
