"""The local queue's order: longest path to the end first, so no slot idles while work remains."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mae.jobs import JobSpec
from mae.sweep.progress import Progress, work


def spec(
    key: str, stage: str, epochs: int, depends_on: str | None = None, workdir: str = "/unused"
) -> JobSpec:
    return JobSpec(
        key=key,
        stage=stage,
        config={stage: {"epochs": epochs}},
        name=key,
        study="s",
        scale="micro",
        tracking_uri="sqlite:///unused.db",
        experiment_id="0",
        workdir=f"{workdir}/{key}",
        depends_on=depends_on,
    )


def study(pretrainings: int) -> dict[str, JobSpec]:
    """`pretrainings` pre-trainings (work 4), each with a fine-tuning (2) and a probe (0.3)."""
    specs = {}
    for i in range(pretrainings):
        specs[f"p{i}"] = spec(f"p{i}", "pretrain", 4)
        specs[f"f{i}"] = spec(f"f{i}", "finetune", 1, depends_on=f"p{i}")
        specs[f"l{i}"] = spec(f"l{i}", "linprobe", 10, depends_on=f"p{i}")
    return specs


def simulate(specs: dict[str, JobSpec], slots: int) -> tuple[float, list[str]]:
    """Run the queue on `slots` simulated cores, each run taking `work(spec)`: (makespan, the
    order in which runs started)."""
    progress = Progress(specs=specs, waiting=list(specs))
    now, ends, started = 0.0, {}, []
    while progress.waiting or progress.running:
        for key in progress.ready()[: slots - len(progress.running)]:
            progress.waiting.remove(key)
            progress.running[key] = None
            ends[key] = now + work(specs[key])
            started.append(key)
        now = min(ends[k] for k in progress.running)
        for key in [k for k in progress.running if ends[k] <= now]:
            progress.record(key, None)
    return now, started


def test_work_weighs_epochs_by_stage():
    specs = study(1)
    assert work(specs["p0"]) == 4.0
    assert work(specs["f0"]) == 2.0
    assert work(specs["l0"]) == 0.3
    assert work(spec("x", "partial", [5, 10])) == 30.0


def test_pretrainings_start_before_evaluations_of_finished_ones():
    specs = study(3)
    progress = Progress(specs=specs, waiting=list(specs))
    progress.waiting.remove("p0")
    progress.done.append("p0")
    assert progress.ready() == ["p1", "p2", "f0", "l0"]


def test_an_odd_pretraining_does_not_run_alone_at_the_end():
    """Three pre-trainings on two cores: evaluations first left the third pre-training running
    alone after them (makespan 12.3); longest path first fills both cores (10, the best any
    order reaches: the third pre-training can start only when a core frees at 4)."""
    makespan, started = simulate(study(3), slots=2)
    assert started[:3] == ["p0", "p1", "p2"]
    assert makespan == 10.0


def test_a_search_worker_is_timed_by_its_share_of_the_search_not_by_its_trial(
    tmp_path: Path,
) -> None:
    """A worker 20 min into a search sits at epoch 1 of a new trial: timed by that epoch, the
    ETA read hours; timed by the share of the search it reports, it reads what is left."""
    specs = {"w0": spec("w0", "finetune", 15, workdir=str(tmp_path))}
    progress = Progress(specs=specs, waiting=[])
    progress.running["w0"] = None
    progress.started["w0"] = time.monotonic() - 1200
    (tmp_path / "w0").mkdir()
    record = {"epoch": 1, "trial": 9, "epochs": 5, "fraction": 0.8}
    (tmp_path / "w0" / "progress.json").write_text(json.dumps(record))
    assert progress.fraction("w0") == 0.8
    assert progress.remaining_s() == pytest.approx(300, abs=5)  # 1200 s / 0.8 * 0.2
    assert progress.epochs() == ["w0 trial 9 1/5"]
    (tmp_path / "w0" / "progress.json").write_text(json.dumps({"epoch": 3}))
    assert progress.fraction("w0") == 0.2 and progress.epochs() == ["w0 3/15"]  # a stage job
