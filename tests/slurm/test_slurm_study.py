"""A micro study through a real Slurm (the dev cluster of slurm/dev-cluster/start.sh): one array
per stage through sbatch, each evaluation task held by `afterok` on its own pre-training task, and
every run in MLflow with its Slurm job id."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mae import track
from mae.schema import load_yaml
from mae.sweep.launch import LaunchReport, launch
from mae.sweep.plan import plan_study
from mae.sweep.profile import load_profile
from mae.sweep.scale import load_scale
from mae.sweep.spec import parse_study, studies_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAST = ["pretrain.epochs=100", "linprobe.epochs=2"]


def squeue_dependencies(folder: Path) -> dict[str, str]:
    """Pending/running tasks of this test (their submission script is under `folder`) ->
    their dependency as squeue shows it, e.g. `afterok:12_0(unfulfilled)`."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%E|%o"], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split("|", 2) for line in out.splitlines() if str(folder) in line]
    return {job_id: dependency for job_id, dependency, _ in rows}


def sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-o", "JobID,State,Start,End", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return {r[0]: {"state": r[1], "start": r[2], "end": r[3]} for r in rows}


def test_micro_study_runs_as_slurm_arrays_with_afterok(tracking_uri, tmp_path):
    raw = load_yaml(studies_dir() / "mask_ratio_sweep.yaml")
    raw["sweep"] = {"masking.ratio": [0.75, 0.9]}
    raw["evaluations"] = ["linprobe"]
    spec = parse_study(raw, "studies/mask_ratio_sweep.yaml (trimmed)", "mask_ratio_sweep")
    plan = plan_study(spec, load_scale("micro"), FAST, tracking_uri=tracking_uri)
    folder = tmp_path / "submitit"  # this machine is the node: a local path is shared
    profile = load_profile("dev").model_copy(update={"job_dir": str(folder)})

    result: list[LaunchReport] = []
    launcher = threading.Thread(
        target=lambda: result.append(
            launch(
                plan, "dev", profile=profile, tracking_uri=tracking_uri, runs_dir=tmp_path / "runs"
            )
        )
    )
    launcher.start()
    seen: dict[str, str] = {}
    while launcher.is_alive():
        for job_id, dependency in squeue_dependencies(folder).items():
            if dependency not in ("", "(null)"):
                seen[job_id] = dependency  # the last one: after narrowing
        time.sleep(0.2)
    launcher.join()

    (report,) = result
    assert report.ok and sorted(report.finished) == sorted(r.name for r in plan.runs)
    rows = {
        r["tags.content_key"]: r for r in track.runs_frame(tracking_uri, "micro").to_dict("records")
    }
    assert {r["status"] for r in rows.values()} == {"FINISHED"} and len(rows) == 4
    job_of = {key: row["tags.slurm_job_id"] for key, row in rows.items()}
    assert all(re.fullmatch(r"\d+_[01]", job) for job in job_of.values())
    arrays = {
        stage: {job_of[r.key].split("_")[0] for r in plan.runs if r.stage == stage}
        for stage in ("pretrain", "linprobe")
    }
    assert all(len(ids) == 1 for ids in arrays.values()), arrays  # one array per stage
    assert arrays["pretrain"] != arrays["linprobe"]

    deadline = time.monotonic() + 60  # the last job may still be exiting after its result
    while True:
        accounting = sacct(sorted(set(job_of.values())))
        states = {accounting[job]["state"] for job in job_of.values()}
        if states != {"COMPLETED"} and "RUNNING" in states and time.monotonic() < deadline:
            time.sleep(1)
            continue
        break
    assert {accounting[job]["state"] for job in job_of.values()} == {"COMPLETED"}
    for run in plan.runs:
        if run.stage != "linprobe":
            continue
        own, parent = job_of[run.key], job_of[run.depends_on]
        # held by afterok on its own pre-training task only (narrowed from the array's union)
        assert seen.get(own) == f"afterok:{parent}(unfulfilled)", seen
        assert accounting[own]["start"] >= accounting[parent]["end"]
        assert rows[run.key]["tags.mlflow.parentRunId"] == rows[run.depends_on]["run_id"]


def test_an_array_sbatch_refuses_fails_its_runs_and_their_evaluations(tracking_uri, tmp_path):
    raw = load_yaml(studies_dir() / "mask_ratio_sweep.yaml")
    raw["sweep"] = {"masking.ratio": [0.75]}
    raw["evaluations"] = ["linprobe"]
    spec = parse_study(raw, "studies/mask_ratio_sweep.yaml (trimmed)", "mask_ratio_sweep")
    plan = plan_study(spec, load_scale("micro"), FAST, tracking_uri=tracking_uri)
    profile = load_profile("dev").model_copy(
        update={"job_dir": str(tmp_path / "submitit"), "partition": "no-such-partition"}
    )

    report = launch(
        plan, "dev", profile=profile, tracking_uri=tracking_uri, runs_dir=tmp_path / "runs"
    )

    pretrain, linprobe = plan.runs
    errors = dict(report.failed)
    assert errors[pretrain.name].startswith("sbatch failed: ")
    assert "invalid partition" in errors[pretrain.name].lower()
    assert errors[linprobe.name] == f"not run: its pre-training {pretrain.name} failed"
    assert report.finished == []
    assert len(track.runs_frame(tracking_uri, "micro")) == 0  # no job ever started
