"""A micro search on the local queue: 8 trials, 2 workers at once, the median pruner on per-epoch
validation top-1. The command is killed (launcher and workers, SIGKILL) once some trials have
finished and run again: it continues the same Optuna study with the finished trials kept, retries
the trials the kill interrupted, logs every trial under the search's MLflow run, evaluates the best
parameters and the default recipe on the test split and writes the best-params file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
import yaml
from support import MICRO_SEARCH, max_overlap

from mae import track
from mae.paths import project_root
from mae.sweep.search_spec import load_search
from mae.sweep.search_study import build_storage

pytestmark = pytest.mark.slow


def command(path: Path, store: Path, runs: Path) -> list[str]:
    return [
        sys.executable,
        str(project_root() / "studies" / "run.py"),
        str(path),
        "--tracking-uri",
        f"sqlite:///{store / 'mlruns.db'}",
        "--runs-dir",
        str(runs),
    ]


def finished_trials(store: Path, name: str) -> int:
    """Finished trials so far, read from the Optuna storage without disturbing it."""
    if not (store / "optuna.db").exists():
        return 0
    spec = load_search(store / "micro_search.yaml")
    try:
        storage = build_storage(f"sqlite:///{store / 'optuna.db'}", spec.heartbeat)
        names = [n for n in optuna.get_all_study_names(storage) if n.startswith(name)]
    except sqlalchemy.exc.SQLAlchemyError:  # the search is creating the schema right now
        return 0
    if not names:
        return 0
    study = optuna.load_study(study_name=names[0], storage=storage)
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))


def test_micro_search_killed_and_continued(tmp_path: Path) -> None:
    store, runs = tmp_path / "store", tmp_path / "runs"
    store.mkdir()
    path = store / "micro_search.yaml"
    path.write_text(MICRO_SEARCH)
    env = {**os.environ, "PYTHONPATH": str(project_root()), "CI": "1"}

    log = tmp_path / "first.log"
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        first = subprocess.Popen(
            command(path, store, runs),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the launcher and its job processes
        )
    deadline = time.monotonic() + 600
    while finished_trials(store, "micro_search/") < 2 and time.monotonic() < deadline:
        if first.poll() is not None:
            pytest.fail(f"the search ended before it could be killed:\n{log.read_text()}")
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = finished_trials(store, "micro_search/")
    assert 2 <= killed_at < 8

    again = subprocess.run(
        command(path, store, runs), env=env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "best trial #" in again.stdout

    uri = f"sqlite:///{store / 'mlruns.db'}"
    frame = track.runs_frame(uri, "micro")
    (parent,) = frame[frame["tags.stage"] == "search"].to_dict("records")
    assert parent["status"] == "FINISHED"
    trials = frame[frame["tags.stage"] == "trial"]
    assert set(trials["tags.mlflow.parentRunId"]) == {parent["run_id"]}

    spec = load_search(path)
    storage = build_storage(f"sqlite:///{store / 'optuna.db'}", spec.heartbeat)
    study = optuna.load_study(study_name=parent["tags.optuna_study"], storage=storage)
    states = Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] + states["PRUNED"] >= 8
    assert states["PRUNED"] >= 1 and states["RUNNING"] == 0

    # one MLflow run per trial number, each in the trial's final state; the first launch's
    # finished trials are kept, not evaluated again
    numbers = [int(n) for n in trials["tags.trial_number"]]
    assert sorted(numbers) == sorted(t.number for t in study.trials)
    assert len(set(numbers)) == len(numbers)
    by_number = {int(r["tags.trial_number"]): r for r in trials.to_dict("records")}
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    client = mlflow.MlflowClient(uri)
    for trial in study.trials:
        run = by_number[trial.number]
        assert run["tags.trial_state"] == trial.state.name
        assert run["status"] == status[trial.state.name]
        steps = [m.step for m in client.get_metric_history(run["run_id"], "linprobe/val_top1")]
        assert len(steps) == len(set(steps))  # no epoch of a trial ran twice
    retried = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert states["FAIL"] == 0 or retried  # the kill's interrupted trials came back

    intervals = [  # failed trials' runs end when the kill was noticed, not when they stopped
        (r["start_time"].timestamp(), r["end_time"].timestamp())
        for r in trials.to_dict("records")
        if r["tags.trial_state"] != "FAIL"
    ]
    assert max_overlap(intervals) == 2

    record = yaml.safe_load((store / "searches" / "micro" / "micro_search.yaml").read_text())
    assert record["best_trial"] == study.best_trial.number
    assert record["params"] == study.best_trial.params
    assert set(record["test_top1"]) == {"best", "default"}
    assert all(isinstance(v, float) for v in record["test_top1"].values())
    evals = frame[frame["tags.stage"] == "linprobe"]
    assert set(evals["status"]) == {"FINISHED"} and len(evals) == 2
