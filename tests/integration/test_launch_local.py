"""The local executor: real job processes through submitit's LocalExecutor, a bounded queue, and
a study whose job process is SIGKILLed mid-run and then resumes into the same MLflow run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from support import max_overlap

from mae import track
from mae.schema import load_yaml
from mae.sweep.launch import LaunchReport, launch, workdir_for
from mae.sweep.plan import plan_study
from mae.sweep.scale import load_scale
from mae.sweep.spec import StudySpec, parse_study, studies_dir

pytestmark = pytest.mark.slow


def ratio_study(ratios: list[float]) -> StudySpec:
    """mask_ratio_sweep trimmed to a few ratios and to pre-training only."""
    raw = load_yaml(studies_dir() / "mask_ratio_sweep.yaml")
    raw["sweep"] = {"masking.ratio": ratios}
    raw["evaluations"] = []
    return parse_study(raw, "studies/mask_ratio_sweep.yaml (trimmed)", "mask_ratio_sweep")


def test_local_queue_runs_at_most_max_parallel_jobs(tracking_uri, runs_dir):
    plan = plan_study(
        ratio_study([0.5, 0.75, 0.9]),
        load_scale("micro"),
        ["pretrain.epochs=200"],  # 3 epochs at micro
        tracking_uri=tracking_uri,
    )

    report = launch(plan, "local", max_parallel=2, tracking_uri=tracking_uri, runs_dir=runs_dir)

    assert report.ok and len(report.finished) == 3
    frame = track.runs_frame(tracking_uri, "micro")
    assert list(frame["status"]) == ["FINISHED"] * 3
    intervals = [
        (start.timestamp(), end.timestamp())
        for start, end in zip(frame["start_time"], frame["end_time"], strict=True)
    ]
    assert max_overlap(intervals) == 2  # bounded by max_parallel, and really in parallel
    assert set(frame["tags.executor"]) == {"local"}


def job_processes(folder: Path) -> list[int]:
    """Pids of submitit job processes whose job folder is under `folder` (this test's only)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [part.decode(errors="replace") for part in cmdline]
        if "submitit.core._submit" in text and any(str(folder) in part for part in text):
            pids.append(int(proc.name))
    return pids


def test_killed_study_resumes_into_the_same_run_with_the_same_result(
    tracking_uri, runs_dir, tmp_path
):
    scale = load_scale("micro")
    spec = ratio_study([0.75])
    sets = ["pretrain.epochs=400"]  # 5 epochs at micro, a checkpoint after each
    plan = plan_study(spec, scale, sets, tracking_uri=tracking_uri)
    (run,) = plan.runs
    checkpoint = workdir_for(runs_dir, "micro", "pretrain", run.key) / "checkpoint.pt"

    result: list[LaunchReport] = []
    launcher = threading.Thread(
        target=lambda: result.append(
            launch(plan, "local", tracking_uri=tracking_uri, runs_dir=runs_dir, max_restarts=0)
        )
    )
    launcher.start()
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = job_processes(runs_dir / ".submitit")
    assert checkpoint.exists() and len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    launcher.join(timeout=120)

    (killed,) = result
    assert killed.finished == [] and [name for name, _ in killed.failed] == [run.name]
    assert "died without a result" in killed.failed[0][1]
    epochs_done = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 1 <= epochs_done < 5, "the job finished before it could be killed"
    (row,) = track.runs_frame(tracking_uri, "micro").to_dict("records")
    assert row["status"] == "KILLED"  # closed by the launcher, which saw its job die
    assert "died without a result" in row["tags.end_reason"]

    again = plan_study(spec, scale, sets, tracking_uri=tracking_uri)
    assert [(r.status, r.run_id) for r in again.runs] == [("resumable", row["run_id"])]
    resumed = launch(again, "local", tracking_uri=tracking_uri, runs_dir=runs_dir)
    assert resumed.ok and resumed.finished == [run.name]

    (final,) = track.runs_frame(tracking_uri, "micro").to_dict("records")
    assert final["run_id"] == row["run_id"] and final["status"] == "FINISHED"
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(row["run_id"], "pretrain/loss")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5]
    assert steps.count(1) == 1  # epoch 1 was not trained again: the job resumed its checkpoint

    # the same study, never interrupted, in a store of its own
    other_uri = f"sqlite:///{tmp_path / 'uninterrupted.db'}"
    reference = plan_study(spec, scale, sets, tracking_uri=other_uri)
    assert launch(reference, "debug", tracking_uri=other_uri, runs_dir=tmp_path / "ref").ok
    (ref,) = track.runs_frame(other_uri, "micro").to_dict("records")
    assert final["metrics.final/pretrain/loss"] == ref["metrics.final/pretrain/loss"]
    assert final["metrics.final/pretrain/epochs"] == ref["metrics.final/pretrain/epochs"] == 5
