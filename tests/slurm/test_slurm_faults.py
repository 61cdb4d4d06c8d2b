"""Faults on a real Slurm (the dev cluster): an outside requeue, a time limit, a cancel and a job
step killed with -9. Each run ends FINISHED in the same MLflow run with the numbers of a run that
was never interrupted, or KILLED with its reason and resumed by running the study again; the
launcher's progress line follows the jobs' real epochs with elapsed time and an estimate."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mae import track
from mae.jobs import END_REASON, read_progress
from mae.schema import load_yaml
from mae.sweep import progress as progress_module
from mae.sweep.launch import LaunchReport, launch, workdir_for
from mae.sweep.plan import Plan, plan_study
from mae.sweep.profile import SlurmProfile, load_profile
from mae.sweep.scale import load_scale
from mae.sweep.spec import parse_study, studies_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LONG = ["pretrain.epochs=40", "runtime.recon_images=0"]  # 40 micro epochs, ~1 s each


def one_pretraining(tracking_uri: str, sets: list[str] = LONG) -> Plan:
    raw = load_yaml(studies_dir() / "mask_ratio_sweep.yaml")
    raw["sweep"] = {"masking.ratio": [0.75]}
    raw["evaluations"] = []
    spec = parse_study(raw, "studies/mask_ratio_sweep.yaml (trimmed)", "mask_ratio_sweep")
    return plan_study(spec, load_scale("micro"), sets, tracking_uri=tracking_uri)


def dev_profile(folder: Path, **changes) -> SlurmProfile:
    return load_profile("dev").model_copy(update={"job_dir": str(folder), **changes})


class Launch:
    """`launch` in a thread, so that the test can hurt its job meanwhile."""

    def __init__(self, plan: Plan, profile: SlurmProfile, uri: str, runs: Path):
        self.plan, self.runs = plan, runs
        self.result: list[LaunchReport] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(
                launch(plan, "dev", profile=profile, tracking_uri=uri, runs_dir=runs)
            )
        )
        self.thread.start()

    def workdir(self) -> Path:
        (run,) = self.plan.runs
        return workdir_for(self.runs, "micro", "pretrain", run.key)

    def wait_for_epoch(self, epoch: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while (read_progress(self.workdir()) or 0) < epoch:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no progress"
            time.sleep(0.2)

    def report(self, timeout: float = 600) -> LaunchReport:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the launch did not end"
        (report,) = self.result
        return report


def job_id(uri: str) -> str:
    (row,) = track.runs_frame(uri, "micro").to_dict("records")
    return row["tags.slurm_job_id"]


def the_run(uri: str) -> dict:
    (row,) = track.runs_frame(uri, "micro").to_dict("records")
    return row


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> float:
    """The final loss of the same pre-training, never interrupted."""
    root = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    assert launch(one_pretraining(uri), "debug", tracking_uri=uri, runs_dir=root / "runs").ok
    return the_run(uri)["metrics.final/pretrain/loss"]


def test_an_outside_requeue_resumes_into_the_same_run(tracking_uri, tmp_path, reference):
    running = Launch(
        one_pretraining(tracking_uri), dev_profile(tmp_path / "jobs"), tracking_uri, tmp_path
    )
    running.wait_for_epoch(3)
    first = the_run(tracking_uri)
    subprocess.run(["scontrol", "requeue", job_id(tracking_uri)], check=True)

    report = running.report()
    final = the_run(tracking_uri)
    assert report.ok and final["run_id"] == first["run_id"] and final["status"] == "FINISHED"
    assert int(final["tags.slurm_restart_count"]) >= 1
    assert final["metrics.final/pretrain/loss"] == reference


@pytest.mark.timeout(2400)  # a few lives of a minute each, longer when the machine is busy
def test_a_job_at_its_time_limit_is_requeued_by_submitit_and_finishes(tracking_uri, tmp_path):
    """A 2-minute limit: USR2 before it, a checkpoint and a requeue, until the work is done."""
    # 150 micro epochs (not a paper label: 100 would map to micro's 2) take ~150 s on a quiet
    # machine, ~600 s on a busy one: past the USR2 at 100 s either way. Each life loses its
    # start-up (10-30 s) and the epoch it was in, so 1-minute lives made no progress at all on
    # a busy machine; 2-minute lives need 2-8.
    sets = ["pretrain.epochs=150", "runtime.recon_images=0"]
    profile = dev_profile(tmp_path / "jobs", timeout_min=2, signal_delay_s=20, max_num_timeout=30)
    plan = one_pretraining(tracking_uri, sets)
    # The uninterrupted reference trains meanwhile, in this process (the job runs on the node).
    uninterrupted = f"sqlite:///{tmp_path / 'reference.db'}"
    with ThreadPoolExecutor(1) as pool:
        never_interrupted = pool.submit(
            launch,
            one_pretraining(uninterrupted, sets),
            "debug",
            tracking_uri=uninterrupted,
            runs_dir=tmp_path / "ref",
        )
        report = Launch(plan, profile, tracking_uri, tmp_path).report(timeout=2000)
        assert never_interrupted.result().ok

    final = the_run(tracking_uri)
    assert report.ok and final["status"] == "FINISHED"
    assert int(final["tags.slurm_restart_count"]) >= 1  # it did reach its limit
    assert (
        final["metrics.final/pretrain/loss"]
        == the_run(uninterrupted)["metrics.final/pretrain/loss"]
    )


@pytest.mark.parametrize("fault", ["scancel", "kill -9 of the job step"])
def test_a_cancelled_or_killed_job_leaves_its_run_killed_and_a_rerun_resumes_it(
    fault, tracking_uri, tmp_path, reference
):
    plan = one_pretraining(tracking_uri)
    profile = dev_profile(tmp_path / "jobs")
    running = Launch(plan, profile, tracking_uri, tmp_path)
    running.wait_for_epoch(3)
    if fault == "scancel":
        subprocess.run(["scancel", job_id(tracking_uri)], check=True)
    else:
        os.kill(step_pid(tmp_path / "jobs"), signal.SIGKILL)

    report = running.report()
    killed = the_run(tracking_uri)
    assert not report.ok and [name for name, _ in report.failed] == [plan.runs[0].name]
    assert killed["status"] == "KILLED" and killed[f"tags.{END_REASON}"]
    print(fault, "->", killed[f"tags.{END_REASON}"])

    again = plan_study(
        parse_study(
            {"name": "mask_ratio_sweep", "sweep": {"masking.ratio": [0.75]}, "evaluations": []},
            "<again>",
            "mask_ratio_sweep",
        ),
        load_scale("micro"),
        LONG,
        tracking_uri=tracking_uri,
    )
    assert [r.status for r in again.runs] == ["resumable"]
    resumed = launch(again, "dev", profile=profile, tracking_uri=tracking_uri, runs_dir=tmp_path)
    final = the_run(tracking_uri)
    assert resumed.ok and final["run_id"] == killed["run_id"] and final["status"] == "FINISHED"
    assert final["metrics.final/pretrain/loss"] == reference


def step_pid(folder: Path) -> int:
    """The pid of the job's Python task (the step that trains), found by its submitit folder."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            text = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "submitit.core._submit" in text and any(str(folder) in part for part in text):
            return int(proc.name)
    raise AssertionError(f"no job step under {folder}")


def test_the_progress_line_follows_the_real_epochs_with_an_estimate(
    tracking_uri, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 1.0)
    caplog.set_level(logging.INFO, logger="mae.sweep.progress")
    report = Launch(
        one_pretraining(tracking_uri), dev_profile(tmp_path / "jobs"), tracking_uri, tmp_path
    ).report()
    assert report.ok
    lines = [r.getMessage() for r in caplog.records if "runs ended" in r.getMessage()]
    epochs = [int(line.split(" ")[-1].split("/")[0]) for line in lines if line.endswith("/40")]
    print(lines[:3], lines[-3:])
    assert epochs and max(epochs) >= 20 and epochs == sorted(epochs)  # real epochs, climbing
    assert any("elapsed" in line and "left" in line for line in lines)  # and an estimate
