"""mae.track against a real SQLite MLflow store in a temp dir."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from mae import track
from mae.config import TABLE_AXES, ExperimentConfig, flatten_config, validate_config
from mae.logger import MetricLogger
from mae.overrides import apply_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """A migrated store, made once: a fresh SQLite store spends seconds on schema migrations."""
    path = tmp_path_factory.mktemp("template") / "mlruns.db"
    track.init_store(f"sqlite:///{path}", "micro")
    return path


@pytest.fixture
def store(tmp_path: Path, empty_db: Path) -> tuple[str, str]:
    shutil.copy(empty_db, tmp_path / "mlruns.db")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    return uri, track.init_store(uri, "micro")


def _params(**overrides) -> dict[str, str]:
    cfg = validate_config(apply_overrides(ExperimentConfig().model_dump(), overrides))
    params = flatten_config(cfg)
    params.update({f"label.{axis}": params[axis] for axis in TABLE_AXES})
    return params


def _open(uri: str, experiment_id: str, key: str, **kw) -> str:
    args = dict(
        key=key,
        stage="pretrain",
        run_name=f"run {key}",
        params=_params(),
        tags={"study": "mask_ratio_sweep", "scale": "micro", "pretrain_key": key},
    )
    args.update(kw)
    return track.open_run(uri, experiment_id, **args)


def test_resolve_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert track.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert track.resolve_tracking_uri() == "http://127.0.0.1:9"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert track.resolve_tracking_uri(project_dir=tmp_path) == f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MAE_PROJECT_DIR", str(tmp_path / "proj"))
    assert track.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'proj'}/mlruns.db"


def test_init_store_creates_experiment_once_with_artifacts_beside_db(tmp_path, empty_db):
    (tmp_path / "db").mkdir()
    shutil.copy(empty_db, tmp_path / "db" / "mlruns.db")
    uri = f"sqlite:///{tmp_path / 'db' / 'mlruns.db'}"
    first = track.init_store(uri, "tiny")
    assert track.init_store(uri, "tiny") == first
    assert track.init_store(uri, "micro") != first
    experiment = mlflow.MlflowClient(uri).get_experiment(first)
    assert experiment.name == "mae-ablate/tiny"
    assert experiment.artifact_location == (tmp_path / "db" / "mlartifacts").as_uri()
    assert track.find_experiment(uri, "tiny") == first
    assert track.find_experiment(uri, "paper") is None
    assert track.tracked_scales(uri) == ["micro", "tiny"]


def test_find_experiment_reads_a_database_without_mlflow_schema_as_empty(tmp_path):
    """The SQL read (planning, the report) finds nothing in a file MLflow never wrote to, and,
    unlike opening MLflow's store, leaves it as it was."""
    db = tmp_path / "mlruns.db"
    db.touch()
    assert track.find_experiment(f"sqlite:///{db}", "tiny") is None
    assert db.stat().st_size == 0


def test_init_store_creates_the_schema_of_a_fresh_file(empty_db):
    tables = sqlite3.connect(empty_db).execute("SELECT name FROM sqlite_master").fetchall()
    assert {"runs", "params", "tags", "latest_metrics", "experiments"} <= {t[0] for t in tables}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "uri, words",
    [
        ("sqlite:////nonexistent-dir/sub/mlruns.db", "does not exist"),
        ("foo://bar", "bad tracking URI foo://bar: use sqlite"),
        ("http://127.0.0.1:{port}", "cannot reach the MLflow server"),
    ],
)
def test_init_store_fails_clearly(uri, words):
    uri = uri.format(port=_free_port())
    start = time.monotonic()
    with pytest.raises(track.TrackingError, match=words):
        track.init_store(uri, "tiny")
    assert time.monotonic() - start < 10


def test_open_run_creates_then_resumes_by_key(store, caplog):
    uri, experiment_id = store
    run_id = _open(uri, experiment_id, "k1")
    run = mlflow.MlflowClient(uri).get_run(run_id)
    params = _params()
    assert len(params) > track.PARAM_BATCH  # exercises the chunked log_batch
    assert run.data.params == params
    assert run.data.params["label.decoder.width"] == "64"
    tags = run.data.tags
    assert tags["content_key"] == "k1" and tags["stage"] == "pretrain"
    assert tags["study"] == "mask_ratio_sweep" and tags["scale"] == "micro"
    assert tags["pretrain_key"] == "k1" and tags["mlflow.runName"] == "run k1"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert tags["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert run.info.status == "RUNNING"

    track.finish_run(uri, run_id, "KILLED")
    changed = {**params, "masking.ratio": "0.5", "extra.param": "1"}
    with caplog.at_level(logging.WARNING, logger="mae.track"):
        again = _open(uri, experiment_id, "k1", params=changed, tags={"slurm_job_id": "42"})
    assert again == run_id
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params["masking.ratio"] == "0.75"  # params are immutable: kept
    assert run.data.params["extra.param"] == "1"  # new ones are added
    assert run.data.tags["slurm_job_id"] == "42"
    assert "masking.ratio" in caplog.text
    assert len(mlflow.MlflowClient(uri).search_runs([experiment_id])) == 1


def test_open_run_explicit_run_id_and_nesting(store):
    uri, experiment_id = store
    parent = _open(uri, experiment_id, "pre")
    child = _open(uri, experiment_id, "ev", stage="finetune", parent_run_id=parent)
    assert mlflow.MlflowClient(uri).get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert _open(uri, experiment_id, "other-key", run_id=child) == child


def test_logger_metrics_final_artifacts(store, tmp_path):
    uri, experiment_id = store
    run_id = _open(uri, experiment_id, "k")
    logger: MetricLogger = track.MlflowLogger(uri, run_id)
    logger.log_metrics({"pretrain/loss": 0.9, "pretrain/lr": 1e-3}, step=1)
    logger.log_metrics({"pretrain/loss": 0.5}, step=2)
    mlogger = track.MlflowLogger(uri, run_id)
    mlogger.log_final({"pretrain/loss": 0.5, "pretrain/wall_time_s": 12.0})
    picture = tmp_path / "reconstruction.png"
    picture.write_bytes(b"\x89PNG fake")
    logger.log_artifact(picture)
    mlogger.log_dict({"masking": {"ratio": 0.75}}, "config.json")
    mlogger.log_text("checkpoint: /runs/k/checkpoint.pt", "checkpoint.txt")
    track.finish_run(uri, run_id)

    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "pretrain/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (1, 0.9),
        (2, 0.5),
    ]
    assert run.data.metrics["final/pretrain/wall_time_s"] == 12.0
    assert run.data.metrics["final/pretrain/loss"] == 0.5
    names = {f.path for f in client.list_artifacts(run_id)}
    assert names == {"reconstruction.png", "config.json", "checkpoint.txt"}
    local = Path(client.download_artifacts(run_id, "config.json", str(tmp_path)))
    assert '"ratio": 0.75' in local.read_text()
    with pytest.raises(ValueError, match="FINISHED"):
        track.finish_run(uri, run_id, "DONE")


def test_find_runs_prefers_finished_then_newest(store):
    uri, experiment_id = store
    client = mlflow.MlflowClient(uri)
    failed = client.create_run(experiment_id, tags={"content_key": "a", "stage": "pretrain"})
    client.set_terminated(failed.info.run_id, "FAILED")
    time.sleep(0.01)
    done_old = client.create_run(experiment_id, tags={"content_key": "a", "stage": "pretrain"})
    client.set_terminated(done_old.info.run_id, "FINISHED")
    time.sleep(0.01)
    done_new = client.create_run(experiment_id, tags={"content_key": "a", "stage": "pretrain"})
    client.set_terminated(done_new.info.run_id, "FINISHED")
    time.sleep(0.01)
    client.create_run(experiment_id, tags={"content_key": "a", "stage": "pretrain"})  # running
    only_failed = client.create_run(experiment_id, tags={"content_key": "b", "study": "s"})
    client.set_terminated(only_failed.info.run_id, "FAILED")
    many = ["a", "b"] + [f"absent{i}" for i in range(track.KEYS_PER_QUERY_LIMIT + 1)]
    few = track.find_runs(uri, experiment_id, ["a", "b", "c"])  # one query per key
    assert track.find_runs(uri, experiment_id, many) == few  # one SQL read of the experiment
    assert set(few) == {"a", "b"}
    assert few["a"].run_id == done_new.info.run_id
    assert few["a"].status == "FINISHED" and few["a"].stage == "pretrain"
    assert few["a"].tags["content_key"] == "a" and few["a"].start_time > 0
    assert few["b"].status == "FAILED" and few["b"].study == "s"
    assert track.find_runs(uri, experiment_id, []) == {}


def test_runs_frame_columns_and_stage_filter(store):
    uri, experiment_id = store
    pre = _open(uri, experiment_id, "p")
    track.MlflowLogger(uri, pre).log_final({"pretrain/wall_time_s": 3.0})
    track.finish_run(uri, pre)
    ev = _open(uri, experiment_id, "e", stage="finetune", parent_run_id=pre)
    track.MlflowLogger(uri, ev).log_metrics({"finetune/top1": 50.0}, step=1)
    track.MlflowLogger(uri, ev).log_final({"finetune/top1": 61.5})

    frame = track.runs_frame(uri, "micro")
    assert list(frame.columns[:6]) == list(track.BASE_COLUMNS)
    assert len(frame) == 2
    by_id = frame.set_index("run_id")
    assert by_id.loc[pre, "status"] == "FINISHED" and by_id.loc[ev, "status"] == "RUNNING"
    assert by_id.loc[ev, "metrics.final/finetune/top1"] == 61.5
    assert by_id.loc[ev, "metrics.finetune/top1"] == 50.0
    assert by_id.loc[ev, "params.label.masking.ratio"] == "0.75"
    assert by_id.loc[ev, "tags.mlflow.parentRunId"] == pre
    assert by_id.loc[pre, "duration_s"] >= 0
    assert isinstance(by_id.loc[pre, "start_time"], pd.Timestamp)
    assert pd.isna(by_id.loc[ev, "end_time"])
    only = track.runs_frame(uri, "micro", stages=["finetune"])
    assert list(only["run_id"]) == [ev]
    assert track.runs_frame(uri, "paper").empty


def test_runs_frame_sql_path_equals_search_runs(store):
    """The fast SQL read and MLflow's search_runs give the same frame (guards schema drift)."""
    uri, experiment_id = store
    for i in range(3):
        run_id = _open(uri, experiment_id, f"k{i}", params=_params(**{"pretrain.seed": i}))
        track.MlflowLogger(uri, run_id).log_final({"finetune/top1": 60.0 + i, "nan": float("nan")})
        track.finish_run(uri, run_id, "FINISHED" if i else "FAILED")
    deleted = _open(uri, experiment_id, "gone")
    mlflow.MlflowClient(uri).delete_run(deleted)
    fast = track.tables.runs(uri, experiment_id)
    slow = track._frame_from_search(uri, experiment_id)
    assert len(fast) == 3
    assert sorted(fast.columns) == sorted(slow.columns)
    fast = fast.sort_values("run_id").reset_index(drop=True)
    slow = slow.sort_values("run_id").reset_index(drop=True)[fast.columns]
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)


# --------------------------------------------------------------------------- a store that goes away


class Flaky:
    """A call that fails `times` times with `error`, then answers."""

    def __init__(self, error: Exception, times: int):
        self.error, self.left, self.calls = error, times, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.error
        return "answered"


def test_calls_wait_out_a_store_that_does_not_answer(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    from mae.track.patience import _patiently

    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    down = MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)
    refused = MlflowException("API request to http://h:5000/api failed with exception refused")
    missing = MlflowException("no such run", RESOURCE_DOES_NOT_EXIST)

    monkeypatch.delenv(track.PATIENCE_ENV, raising=False)  # the CLIs: no waiting
    with pytest.raises(MlflowException, match="locked"):
        _patiently("sqlite:///x.db", "log_batch", Flaky(down, 1))
    monkeypatch.setenv(track.PATIENCE_ENV, "60")
    for error in (down, refused, ConnectionRefusedError("refused")):
        flaky = Flaky(error, 4)
        assert _patiently("http://h:5000", "log_batch", flaky) == "answered"
        assert flaky.calls == 5
    flaky = Flaky(missing, 1)  # the caller's mistake: no retry
    with pytest.raises(MlflowException, match="no such run"):
        _patiently("http://h:5000", "get_run", flaky)
    assert flaky.calls == 1
    clock[0] = 0.0
    with pytest.raises(track.TrackingError) as info:
        _patiently("http://h:5000", "log_batch", Flaky(refused, 10**6))
    assert str(info.value).startswith(
        "the MLflow tracking store http://h:5000 did not answer for 60 s (log_batch: API request"
    )
    assert clock[0] == 60  # bounded: pauses of 1, 2, 4 ... 30 s, cut at the patience


def test_jobs_are_patient_unless_told_otherwise(monkeypatch):
    for name in (track.PATIENCE_ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    track.be_patient()
    assert os.environ[track.PATIENCE_ENV] == "900"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # the user's setting stays
