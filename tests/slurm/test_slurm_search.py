"""The micro search of the local test as Slurm jobs on the dev cluster (slurm/dev-cluster):
the pre-training, then the workers as one array of two tasks, each joining the Optuna study,
then the two test evaluations; every trial's run says which array task ran it."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from support import MICRO_SEARCH

from mae import track
from mae.sweep import cli
from mae.sweep.profile import load_profile
from mae.sweep.search_spec import load_search
from mae.sweep.search_study import build_storage

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-o", "JobID,State", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if line)


def test_micro_search_runs_as_one_slurm_array_of_workers(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    store.mkdir()
    search = store / "micro_search.yaml"
    search.write_text(MICRO_SEARCH)
    profile = load_profile("dev").model_dump()
    profile["job_dir"] = str(tmp_path / "submitit")  # this machine is the node: local is shared
    cluster = tmp_path / "dev_test.yaml"
    cluster.write_text(yaml.safe_dump(profile))
    uri = f"sqlite:///{store / 'mlruns.db'}"

    argv = [str(search), "--cluster", str(cluster), "--tracking-uri", uri]
    code = cli.main([*argv, "--runs-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0, out

    frame = track.runs_frame(uri, "micro")
    (parent,) = frame[frame["tags.stage"] == "search"].to_dict("records")
    assert parent["status"] == "FINISHED"
    trials = frame[frame["tags.stage"] == "trial"]
    assert set(trials["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    tasks = set(trials["tags.worker"])
    arrays = {task.split("_")[0] for task in tasks}
    assert len(arrays) == 1 and {task.split("_")[1] for task in tasks} <= {"0", "1"}, tasks
    assert set(sacct_states(sorted(arrays)).values()) == {"COMPLETED"}

    spec = load_search(search)
    storage = build_storage(f"sqlite:///{store / 'optuna.db'}", spec.heartbeat)
    study = optuna.load_study(study_name=parent["tags.optuna_study"], storage=storage)
    states = Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] + states["PRUNED"] >= 8 and states["RUNNING"] == 0
    assert sorted(int(n) for n in trials["tags.trial_number"]) == [t.number for t in study.trials]
    evals = frame[frame["tags.stage"] == "linprobe"]
    assert len(evals) == 2 and evals["tags.slurm_job_id"].str.contains("_").all()
    assert (store / "searches" / "micro" / "micro_search.yaml").exists()
