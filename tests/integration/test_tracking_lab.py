"""The lab's tracking set-up (slurm/tracking-server/start.sh: PostgreSQL + mlflow server) under
load and under faults: 8 concurrent writer processes lose no metric through the server, nor on the
default SQLite store; a server that goes away mid-run is waited for and nothing is lost; one gone
for good fails the run within the patience, naming the store, with what it logged kept.

Each writer process does what a job's rank 0 does through mae.track (open the run with a full
config, one log call per epoch, final numbers, close); the fault tests run real pre-training jobs
through the local launcher."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import sqlalchemy
from conftest import answers, free_port
from tracking_writer import value

from mae import track
from mae.jobs import read_progress
from mae.sweep.launch import LaunchReport, launch, workdir_for
from mae.sweep.plan import Plan, plan_study
from mae.sweep.scale import load_scale
from mae.sweep.spec import parse_study

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).with_name("mlflow")
WRITERS, STEPS, KEYS = 8, 40, 6
SERVER_START_S = 600  # a loaded 2-core machine takes minutes to import mlflow into a server


def run_writers(uri: str, experiment_id: str) -> float:
    """WRITERS processes at once; returns the seconds they took together."""
    start_at = time.time() + 5  # every process imported and waiting: they overlap
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(TESTS / "tracking_writer.py"), uri, experiment_id, str(i)]
            + [str(STEPS), str(KEYS), str(start_at)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(WRITERS)
    ]
    errors = [proc.communicate(timeout=1200)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * WRITERS, errors
    return time.time() - start_at


def count_metrics(uri: str, experiment_id: str) -> tuple[int, int]:
    """(metrics expected, metrics found with the value each writer logged) over all writers."""
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([experiment_id])
    assert len(runs) == WRITERS and {r.info.status for r in runs} == {"FINISHED"}
    found = 0
    for run in runs:
        index = int(run.data.tags["content_key"].removeprefix("writer-"))
        assert run.data.metrics["final/w/result"] == index
        for k in range(KEYS):
            history = client.get_metric_history(run.info.run_id, f"w/m{k}")
            logged = {(m.step, m.value) for m in history}
            found += len(logged & {(s, value(index, s, k)) for s in range(1, STEPS + 1)})
            assert len(history) == len(logged)  # none twice
    return WRITERS * STEPS * KEYS, found


def test_eight_concurrent_writers_lose_nothing_on_the_default_sqlite_store(tmp_path):
    uri = track.resolve_tracking_uri(project_dir=tmp_path)  # sqlite:///<project>/mlruns.db
    experiment_id = track.init_store(uri, "concurrency")  # schema once, before any writer
    took = run_writers(uri, experiment_id)
    expected, found = count_metrics(uri, experiment_id)
    print(f"SQLite: {WRITERS} writers, {expected} metrics expected, {found} found, {took:.0f} s")
    assert found == expected


def test_eight_concurrent_jobs_lose_nothing_through_the_postgresql_server(tracking_lab):
    experiment_id = track.init_store(tracking_lab.uri, f"concurrency-{uuid.uuid4().hex[:8]}")
    took = run_writers(tracking_lab.uri, experiment_id)
    expected, found = count_metrics(tracking_lab.uri, experiment_id)
    print(f"PostgreSQL: {WRITERS} jobs, {expected} metrics expected, {found} found, {took:.0f} s")
    assert found == expected
    engine = sqlalchemy.create_engine(tracking_lab.backend)  # and they are in PostgreSQL
    with engine.connect() as db:
        rows = db.execute(
            sqlalchemy.text(
                "SELECT count(*) FROM metrics JOIN runs ON metrics.run_uuid = runs.run_uuid "
                "WHERE runs.experiment_id = :e AND metrics.key LIKE 'w/m%'"
            ),
            {"e": int(experiment_id)},
        ).scalar()
    engine.dispose()
    assert rows == expected


def test_the_scripts_server_keeps_artifacts_and_postgresql_serves_optuna(tracking_lab, tmp_path):
    import optuna

    experiment_id = track.init_store(tracking_lab.uri, f"artifacts-{uuid.uuid4().hex[:8]}")
    run_id = track.open_run(
        tracking_lab.uri, experiment_id, key="a", stage="pretrain", run_name="a", params={}, tags={}
    )
    picture = tmp_path / "reconstruction.png"
    picture.write_bytes(b"\x89PNG not really")
    track.MlflowLogger(tracking_lab.uri, run_id).log_artifact(picture)
    stored = tracking_lab.state / "artifacts" / experiment_id / run_id / "artifacts" / picture.name
    assert stored.read_bytes() == picture.read_bytes()  # on the server's artifact folder

    storage = tracking_lab.database("optuna")  # the second database, for Optuna's RDB storage
    study = optuna.create_study(storage=storage, study_name=f"t-{uuid.uuid4().hex[:8]}")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2, n_trials=2)
    again = optuna.load_study(storage=storage, study_name=study.study_name)
    assert len(again.trials) == 2


# --------------------------------------------------------------------------- a store that goes away


class Server:
    """An mlflow server of our own on the lab's PostgreSQL: the test stops and starts it."""

    def __init__(self, backend: str, root: Path):
        self.backend, self.root, self.port = backend, root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("a")
        self.process = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", self.backend]
            + ["--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts"]
            + ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + SERVER_START_S
        while not answers(self.uri):
            assert self.process.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its workers
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tracking_lab, tmp_path_factory):
    """One for the module's two tests (a start costs minutes here): the first stops and restarts
    it, the second stops it for good."""
    server = Server(tracking_lab.backend, tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()


def one_pretraining(uri: str, epochs: int, seed: int) -> Plan:
    spec = parse_study(
        {"name": "mask_ratio_sweep", "sweep": {"masking.ratio": [0.75]}, "evaluations": []},
        "<outage>",
        "mask_ratio_sweep",
    )
    sets = [f"pretrain.epochs={epochs}", f"pretrain.seed={seed}", "runtime.recon_images=0"]
    return plan_study(spec, load_scale("micro"), sets, tracking_uri=uri)


class Launch:
    """`launch` (local queue: a real job process) in a thread, so the test can stop the server."""

    def __init__(self, plan: Plan, uri: str, runs: Path):
        (self.run,) = plan.runs
        self.workdir = workdir_for(runs, "micro", "pretrain", self.run.key)
        self.result: list[LaunchReport] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(
                launch(plan, "local", tracking_uri=uri, runs_dir=runs)
            )
        )
        self.thread.start()

    def wait_for_epoch(self, epoch: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while (read_progress(self.workdir) or 0) < epoch:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no progress"
            time.sleep(0.2)

    def report(self, timeout: float = 1800) -> LaunchReport:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the launch did not end"
        return self.result[0]


def losses(uri: str, key: str) -> tuple[str, str, list[int]]:
    """(run id, status, the epochs of its pretrain/loss history, in order) of the run `key`."""
    record = track.find_runs(uri, track.find_experiment(uri, "micro"), [key])[key]
    history = mlflow.MlflowClient(uri).get_metric_history(record.run_id, "pretrain/loss")
    return record.run_id, record.status, sorted(m.step for m in history)


def test_a_server_that_goes_away_mid_run_is_waited_for_and_nothing_is_lost(
    server, tmp_path, monkeypatch
):
    monkeypatch.setenv(track.PATIENCE_ENV, str(2 * SERVER_START_S))  # outlasts a restart here
    epochs = 12
    running = Launch(
        one_pretraining(server.uri, epochs, random.randrange(10**6)), server.uri, tmp_path
    )
    running.wait_for_epoch(3)
    server.stop()
    stopped_at = read_progress(running.workdir)
    time.sleep(10)  # the job trains on, then waits to log its next epoch
    assert read_progress(running.workdir) <= stopped_at + 1
    server.start()

    report = running.report()
    run_id, status, steps = losses(server.uri, running.run.key)
    print(f"server stopped after epoch {stopped_at}; the run logged epochs {steps}")
    assert report.ok and status == "FINISHED"
    assert steps == list(range(1, epochs + 1))  # every epoch once, those around the outage too


def test_a_server_gone_for_good_fails_the_run_in_bounded_time_naming_it(
    server, tracking_lab, tmp_path, monkeypatch
):
    patience, seed = 20, random.randrange(10**6)
    monkeypatch.setenv(track.PATIENCE_ENV, str(patience))
    running = Launch(one_pretraining(server.uri, 12, seed), server.uri, tmp_path)
    running.wait_for_epoch(3)
    gone = time.monotonic()  # before the stop, which takes seconds: the job may notice sooner
    server.stop()
    report = running.report()
    took = time.monotonic() - gone

    ((name, error),) = report.failed
    print(f"failed {took:.0f} s after the server went away: {error}")
    assert f"the MLflow tracking store {server.uri} did not answer for" in error
    assert patience <= took < patience + 60  # + a last request, an epoch, the queue's polling
    # What it had logged is in the store (read through the lab's own server on the same
    # database), and the run stays resumable: the study run again finishes it.
    run_id, status, steps = losses(tracking_lab.uri, running.run.key)
    assert status == "RUNNING" and steps == list(range(1, len(steps) + 1)) and len(steps) >= 3
    monkeypatch.setenv(track.PATIENCE_ENV, "60")
    again = one_pretraining(tracking_lab.uri, 12, seed)
    assert [r.status for r in again.runs] == ["resumable"]
    assert launch(again, "local", tracking_uri=tracking_lab.uri, runs_dir=tmp_path).ok
    assert losses(tracking_lab.uri, running.run.key) == (run_id, "FINISHED", list(range(1, 13)))
