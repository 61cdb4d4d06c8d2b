"""A search worker's trials in this process: the space as Optuna distributions, a trial's nested
MLflow run in its final state (complete, pruned, interrupted), no test-split number ever taken
inside a trial, and the best parameters read back by other studies (`@search:<name>`)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
import submitit
import yaml

from mae import track
from mae.jobs import JobInterrupted, WorkerJob, job_for, read_progress_record
from mae.schema import ConfigError
from mae.sweep.plan import plan_study
from mae.sweep.scale import load_scale
from mae.sweep.search import plan_search
from mae.sweep.search_files import best_params_path, write_best_params
from mae.sweep.search_spec import Choices, Range, grid_values, parse_search
from mae.sweep.search_study import (
    build_storage,
    distributions,
    shown_url,
    storage_url,
    suggest,
)
from mae.sweep.spec import load_study, parse_study
from mae.sweep.worker import SearchWorker

SEARCH = {
    "name": "unit_search",
    "kind": "search",
    "scale": "micro",
    "protocol": "finetune",
    "overrides": {"finetune.warmup_epochs": 0},
    "space": {
        "blr": {"low": 1e-4, "high": 1e-2, "log": True},
        "drop_path": {"low": 0.0, "high": 0.2, "step": 0.1},
        "epochs": {"choices": [2]},
    },
    "n_trials": 2,
}


def test_space_becomes_optuna_distributions_and_grids() -> None:
    spec = parse_search(SEARCH, "<test>", "unit_search")
    kinds = {"blr": float, "drop_path": float, "epochs": int}
    space = distributions(spec.space, kinds)
    assert space["blr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["drop_path"].step == 0.1
    assert space["epochs"] == optuna.distributions.CategoricalDistribution([2])
    assert grid_values(spec.space["drop_path"]) == [0.0, 0.1, 0.2]
    assert grid_values(Choices(choices=[5, 10])) == [5, 10]
    ints = distributions({"epochs": Range(low=2, high=8, step=2)}, {"epochs": int})
    assert ints["epochs"] == optuna.distributions.IntDistribution(2, 8, step=2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = {name: suggest(trial, name, dist) for name, dist in space.items()}
    assert 1e-4 <= values["blr"] <= 1e-2 and values["epochs"] == 2


def test_storage_urls_sit_beside_the_store_and_hide_passwords(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert storage_url(None, uri) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert storage_url("journal", uri) == f"journal:{tmp_path / 'optuna.journal'}"
    assert storage_url("postgresql://u:pw@db:5432/optuna", uri).endswith("@db:5432/optuna")
    assert shown_url("postgresql://u:pw@db:5432/optuna") == "postgresql://u:***@db:5432/optuna"
    assert shown_url("sqlite:////x/optuna.db") == "sqlite:////x/optuna.db"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, micro) -> Path:
    """A one-epoch micro MAE: what the trials fine-tune."""
    from mae.train.pretrain import pretrain

    workdir = tmp_path_factory.mktemp("pretrain")
    pretrain(micro(**{"pretrain.epochs": 1}), workdir)
    return workdir / "checkpoint.pt"


def make_worker(tracking_uri: str, tmp_path: Path, checkpoint: Path) -> SearchWorker:
    sp = plan_search(
        parse_search(SEARCH, "<test>", "unit_search"), load_scale("micro"), (), tracking_uri
    )
    experiment = track.init_store(tracking_uri, "micro")
    parent = track.open_run(
        tracking_uri, experiment, key="search/x", stage="search", run_name="x", params={}, tags={}
    )
    return SearchWorker(
        name="unit_search/worker0",
        stage="finetune",
        workdir=str(tmp_path / "worker0"),
        config=sp.base.model_dump(mode="json"),
        depends_on=None,
        search="unit_search",
        scale="micro",
        study_name=sp.study_name,
        storage_url=sp.storage_url,
        heartbeat=sp.spec.heartbeat,
        sampler=sp.spec.sampler,
        sampler_seed=0,
        pruner=sp.spec.pruner,
        space=dict(sp.spec.space),
        kinds={"blr": float, "drop_path": float, "epochs": int},
        metric="finetune/val_top1",
        n_trials=2,
        max_epochs=2,
        tracking_uri=tracking_uri,
        experiment_id=experiment,
        parent_run_id=parent,
        pretrain_key=sp.pretrain.key,
        pretrain_checkpoint=str(checkpoint),
        trials_dir=str(tmp_path / "trials"),
    )


class Always(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def the_run(tracking_uri: str, number: int) -> mlflow.entities.Run:
    (run,) = mlflow.MlflowClient(tracking_uri).search_runs(
        [track.find_experiment(tracking_uri, "micro")],
        filter_string=f"tags.trial_number = '{number}'",
    )
    return run


def test_a_trial_is_a_nested_run_and_never_sees_the_test_split(
    tracking_uri, tmp_path, pretrained, monkeypatch
) -> None:
    def no_test(*args, **kwargs):
        raise AssertionError("a trial measured the test split")

    monkeypatch.setattr("mae.evaluate.loop.test_numbers", no_test)
    worker = make_worker(tracking_uri, tmp_path, pretrained)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: worker.objective(study, trial), n_trials=1)
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2]
    run = the_run(tracking_uri, 0)
    assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "COMPLETE"
    assert run.data.tags["mlflow.parentRunId"] == worker.parent_run_id
    assert run.data.tags["stage"] == "trial"  # never a table's finetune run
    assert run.data.params["search.blr"] == str(trial.params["blr"])
    assert run.data.metrics["final/finetune/val_top1"] == trial.value
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(
        run.info.run_id, "finetune/val_top1"
    )
    assert [m.step for m in history] == [1, 2]
    assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    assert not (tmp_path / "trials" / "trial0").exists()  # finished trials keep no checkpoint
    # the launcher's line: this trial at its last epoch is half of a 2-trial search
    assert read_progress_record(worker.workdir) == {
        "epoch": 2,
        "trial": 0,
        "epochs": 2,
        "fraction": 0.5,
    }


def test_a_pruned_trial_is_killed_and_tagged_pruned(tracking_uri, tmp_path, pretrained) -> None:
    worker = make_worker(tracking_uri, tmp_path, pretrained)
    study = optuna.create_study(direction="maximize", pruner=Always())
    study.optimize(lambda trial: worker.objective(study, trial), n_trials=1)
    (trial,) = study.trials
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
    run = the_run(tracking_uri, 0)
    assert run.info.status == "KILLED"
    assert run.data.tags["trial_state"] == "PRUNED" and run.data.tags["last_epoch"] == "1"


def test_an_interrupted_trial_fails_and_comes_back_as_a_retry(tracking_uri, tmp_path) -> None:
    worker = make_worker(tracking_uri, tmp_path, Path("unused"))
    storage = build_storage(worker.storage_url, worker.heartbeat)
    study = optuna.create_study(storage=storage, study_name=worker.study_name, direction="maximize")
    trial = study.ask()
    trial.suggest_float("blr", 1e-4, 1e-2, log=True)
    trial.report(50.0, 1)
    run_id = worker._open_run(trial, worker_config(worker), {"blr": 1e-3}, None)
    worker._current = (trial.number, run_id)

    delayed = WorkerJob().checkpoint(worker)  # what submitit calls on timeout or preemption

    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.args == (worker,) and worker._current is None
    failed, retry = study.trials
    assert failed.state.name == "FAIL" and retry.state.name == "WAITING"
    assert retry.params == failed.params and retry.system_attrs["failed_trial"] == 0
    assert retry.intermediate_values == {1: 50.0}  # the retry resumes where it stopped
    run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "FAIL"
    assert isinstance(job_for(worker), WorkerJob)


def worker_config(worker: SearchWorker):
    from mae.config import validate_config

    return validate_config(worker.config)


def test_best_parameters_feed_other_studies(tracking_uri, tmp_path) -> None:
    uri = tracking_uri
    path = best_params_path(tracking_uri, "micro", "unit_search")
    write_best_params(path, {"params": {"blr": 0.0123, "layer_decay": 0.6}})
    assert yaml.safe_load(path.read_text())["params"]["blr"] == 0.0123
    scale = load_scale("micro")
    plan = plan_study(
        load_study("mask_ratio_sweep"),
        scale,
        ["finetune=@search:unit_search"],
        reference_uri=tracking_uri,
    )
    finetunes = [r for r in plan.runs if r.stage == "finetune"]
    assert finetunes and all(r.config.finetune.blr == 0.0123 for r in finetunes)
    assert all(r.config.finetune.layer_decay == 0.6 for r in finetunes)
    in_file = parse_study(
        {"overrides": {"finetune": "@search:unit_search"}, "evaluations": ["finetune"]},
        "study.yaml",
        "s",
    )
    (_, run) = plan_study(in_file, scale, reference_uri=tracking_uri).runs
    assert run.config.finetune.blr == 0.0123
    with pytest.raises(ConfigError, match=r"--set: finetune: got '@search:nope'; no finished"):
        plan_study(
            load_study("mask_ratio_sweep"),
            scale,
            ["finetune=@search:nope"],
            reference_uri=tracking_uri,
        )
    with pytest.raises(ConfigError, match="evaluation section"):
        plan_study(load_study("demo"), scale, ["data=@search:unit_search"], reference_uri=uri)


def test_a_cancelled_worker_hands_its_trial_back(tracking_uri, tmp_path, monkeypatch) -> None:
    """SIGTERM (scancel, the local queue's Ctrl-C) raises JobInterrupted inside the trial."""

    def cancelled(*args, **kwargs):
        raise JobInterrupted("received SIGTERM")

    monkeypatch.setattr(SearchWorker, "_evaluate", cancelled)
    worker = make_worker(tracking_uri, tmp_path, Path("unused"))
    storage = build_storage(worker.storage_url, worker.heartbeat)
    study = optuna.create_study(storage=storage, study_name=worker.study_name, direction="maximize")
    with pytest.raises(JobInterrupted):
        study.optimize(lambda trial: worker.objective(study, trial), n_trials=1)
    failed, retry = study.trials
    assert failed.state.name == "FAIL" and retry.state.name == "WAITING"
    run = the_run(tracking_uri, 0)
    assert run.info.status == "FAILED" and "interrupted" in run.data.tags["end_reason"]
