"""Faults on the local executor, with real job processes: kill -9 again and again, a NaN loss, and
Ctrl-C on `studies/run.py`. Nothing is lost: runs resume into the same MLflow run and end with
the numbers of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from mae import track
from mae.jobs import END_REASON, read_progress
from mae.paths import project_root
from mae.schema import load_yaml
from mae.sweep.launch import LaunchReport, launch, workdir_for
from mae.sweep.plan import plan_study
from mae.sweep.scale import load_scale
from mae.sweep.spec import StudySpec, parse_study, studies_dir

pytestmark = pytest.mark.slow


def ratio_study(ratios: list[float], evaluations: list[str] | None = None) -> StudySpec:
    raw = load_yaml(studies_dir() / "mask_ratio_sweep.yaml")
    raw["sweep"] = {"masking.ratio": ratios}
    raw["evaluations"] = evaluations or []
    return parse_study(raw, "studies/mask_ratio_sweep.yaml (trimmed)", "mask_ratio_sweep")


def task_pids(folder: Path) -> list[int]:
    """Pids of the submitit task processes (the ones that train) under `folder`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            text = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "submitit.core._submit" in text and any(str(folder) in part for part in text):
            pids.append(int(proc.name))
    return pids


def reference_loss(spec: StudySpec, sets: list[str], tmp_path: Path) -> float:
    """The same pre-training, never interrupted, in a store of its own."""
    uri = f"sqlite:///{tmp_path / 'reference.db'}"
    plan = plan_study(spec, load_scale("micro"), sets, tracking_uri=uri)
    assert launch(plan, "debug", tracking_uri=uri, runs_dir=tmp_path / "reference").ok
    (row,) = track.runs_frame(uri, "micro").to_dict("records")
    return row["metrics.final/pretrain/loss"]


def test_ten_kill_9_in_a_row_and_the_study_still_ends_as_if_never_killed(
    tracking_uri, runs_dir, tmp_path
):
    # 30 epochs of ~1 s: ten lives train about two each (a start-up, then killed inside the next
    # epoch), which leaves a third of the run for the last life.
    spec, sets = ratio_study([0.75]), ["pretrain.epochs=30", "runtime.recon_images=0"]
    plan = plan_study(spec, load_scale("micro"), sets, tracking_uri=tracking_uri)
    (run,) = plan.runs
    workdir = workdir_for(runs_dir, "micro", "pretrain", run.key)
    result: list[LaunchReport] = []
    launcher = threading.Thread(
        target=lambda: result.append(
            launch(plan, "local", tracking_uri=tracking_uri, runs_dir=runs_dir, max_restarts=10)
        )
    )
    launcher.start()
    rng, kills, killed_at, epoch = random.Random(0), 0, [], 0
    deadline = time.monotonic() + 600
    while kills < 10 and time.monotonic() < deadline and launcher.is_alive():
        pids = task_pids(runs_dir / ".submitit")
        now = read_progress(workdir) or 0
        if pids and now > epoch:  # a job that has trained at least one epoch since the last kill
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next epoch
            os.kill(pids[0], signal.SIGKILL)
            kills, epoch = kills + 1, now
            killed_at.append(now)
        time.sleep(0.05)
    launcher.join(timeout=600)
    print("killed after epochs", killed_at)  # e.g. [1, 3, 5, 7, ...]: each life trained some

    (report,) = result
    assert kills == 10 and report.ok and report.finished == [run.name]
    (row,) = track.runs_frame(tracking_uri, "micro").to_dict("records")
    assert row["status"] == "FINISHED"
    assert row["metrics.final/pretrain/loss"] == reference_loss(spec, sets, tmp_path)
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(row["run_id"], "pretrain/loss")
    assert sorted({m.step for m in history}) == list(range(1, 31))  # one run, every epoch


def test_a_nan_loss_fails_its_run_with_the_reason_and_the_rest_goes_on(tracking_uri, runs_dir):
    raw = {
        "name": "diverging",
        "cases": [{"masking.ratio": 0.5, "pretrain.blr": 1e9}, {"masking.ratio": 0.75}],
        "evaluations": ["linprobe"],
    }
    spec = parse_study(raw, "<diverging>", "diverging")  # the first pre-training's lr is absurd
    sets = ["pretrain.epochs=200", "runtime.recon_images=0"]  # 3 epochs at micro
    plan = plan_study(spec, load_scale("micro"), sets, tracking_uri=tracking_uri)

    report = launch(plan, "local", tracking_uri=tracking_uri, runs_dir=runs_dir)

    failed = dict(report.failed)
    assert set(report.finished) == {r.name for r in plan.runs if "ratio=0.75" in r.name}
    nan_run = next(name for name in failed if name.endswith("pretrain"))
    assert "FloatingPointError: pre-training loss is nan" in failed[nan_run]
    probe = next(name for name in failed if name.endswith("linprobe"))
    assert failed[probe].startswith("not run: its pre-training")
    frame = track.runs_frame(tracking_uri, "micro")
    row = frame[frame["run_name"] == nan_run].iloc[0]
    assert row["status"] == "FAILED" and "loss is nan" in row[f"tags.{END_REASON}"]
    assert len(frame) == 3  # the probe of the failed pre-training never started


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigterm-background"])
def test_an_interrupt_cancels_the_running_jobs_and_a_rerun_resumes_them(tmp_path, how):
    """SIGINT to the whole process group, as a terminal's Ctrl-C, or SIGTERM to the launcher
    alone, as `kill` or a CI time-out, also when it was started as `cmd &` from a script (SIGINT
    ignored, which its jobs inherited: cancelling them did nothing): exit 130 at once, no prompt,
    no job process left behind, no run left RUNNING, and running the study again resumes into
    the same run."""
    study = tmp_path / "short.yaml"
    study.write_text(
        json.dumps({"name": "short", "sweep": {"masking.ratio": [0.75]}, "evaluations": []})
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "MAE_RUNS_DIR": str(tmp_path / "runs"),
    }
    command = [
        sys.executable,
        str(project_root() / "studies" / "run.py"),
        str(study),
        "--scale",
        "micro",
        "--set",
        "pretrain.epochs=12",  # ~1 s each: the signal comes after the first, a rerun does the rest
    ]
    proc = subprocess.Popen(
        command,
        env=env,
        start_new_session=True,  # a process group of its own, as a shell gives a command
        preexec_fn=_ignore_sigint if how == "sigterm-background" else None,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").rglob("progress.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    print(out[-2000:])
    assert proc.returncode == 130 and "interrupted: 1 job(s) cancelled" in out
    deadline = time.monotonic() + 30
    while task_pids(tmp_path / "runs") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not task_pids(tmp_path / "runs")  # nothing orphaned to run on beside a rerun

    uri = env["MLFLOW_TRACKING_URI"]
    (row,) = track.runs_frame(uri, "micro").to_dict("records")
    assert row["status"] == "KILLED" and "interrupted" in row[f"tags.{END_REASON}"]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    (final,) = track.runs_frame(uri, "micro").to_dict("records")
    assert final["run_id"] == row["run_id"] and final["status"] == "FINISHED"
