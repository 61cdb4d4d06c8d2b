"""Waiting out a tracking store that went away: a server restarted, a database failing over, a
SQLite file locked by other writers. Every MLflow call of `mae.track` goes through `PatientClient`,
which retries what failed for want of an answer while `MAE_TRACKING_PATIENCE_S` lasts, then fails
with the store's URI. Jobs wait (`be_patient`); the CLIs, which leave the variable unset, fail
fast. Retrying is safe: MLflow ignores a metric logged twice, and params, tags and statuses are
written again with the same values.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy

log = logging.getLogger(__name__)

PATIENCE_ENV = "MAE_TRACKING_PATIENCE_S"  # how long calls wait for a store that went away
JOB_PATIENCE_S = 900
# MLflow's own retries of one HTTP request (its defaults, 7 retries with backoff factor 2, take
# about 4 min); in jobs each request gives up sooner and the patience bounds the whole wait.
JOB_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
MAX_PAUSE_S = 30.0
T = TypeVar("T")


class TrackingError(RuntimeError):
    """The tracking store cannot be used (bad URI, unreachable server); the message says why."""


def be_patient() -> None:
    """For a job process: wait up to `JOB_PATIENCE_S` for a store that goes away and keep MLflow's
    per-request retries short, unless the environment already says otherwise."""
    os.environ.setdefault(PATIENCE_ENV, str(JOB_PATIENCE_S))
    for name, value in JOB_HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


def _transient(exc: Exception) -> bool:
    """Worth retrying: no answer, or a 5xx one (MLflow reports a connection error, a server that
    is down and a locked or unreachable database as 5xx codes); 4xx are the caller's mistakes."""
    from mlflow.exceptions import MlflowException  # here: SQL reads (mae.track.tables) go without

    if isinstance(exc, MlflowException):
        return exc.get_http_status_code() >= 500
    return isinstance(exc, OSError | sqlalchemy.exc.OperationalError)


def _patiently(uri: str, what: str, call: Callable[[], T]) -> T:
    """`call()`, retried with a growing pause (1 s to 30 s) while the store does not answer and
    the patience lasts; then a TrackingError naming the store."""
    patience = float(os.environ.get(PATIENCE_ENV) or 0)
    start, pause = time.monotonic(), 1.0
    while True:
        try:
            result = call()
        except Exception as exc:
            waited = time.monotonic() - start
            if patience <= 0 or not _transient(exc):
                raise
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            if waited >= patience:
                raise TrackingError(
                    f"the MLflow tracking store {uri} did not answer for {waited:.0f} s "
                    f"({what}: {reason}); what was logged before stays in it, and the run "
                    "resumes from its checkpoint when started again"
                ) from exc
            if pause == 1.0:
                log.warning("tracking store %s: %s failed (%s); retrying", uri, what, reason)
            time.sleep(min(pause, patience - waited))
            pause = min(2 * pause, MAX_PAUSE_S)
            continue
        if pause > 1.0:
            log.warning(
                "tracking store %s answers again after %.0f s", uri, time.monotonic() - start
            )
        return result


class PatientClient:
    """An MlflowClient whose every call waits out a store that went away (`_patiently`)."""

    def __init__(self, uri: str):
        import mlflow  # here, not at the top: reading a SQL store does without it (mae.track)

        self._uri, self._client = uri, mlflow.MlflowClient(tracking_uri=uri)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method
        return lambda *args, **kw: _patiently(self._uri, name, lambda: method(*args, **kw))
