"""Whole micro-scale studies launched in this process (`debug` executor) into a real SQLite MLflow
store: every planned run is tracked with its params, metrics and artifacts; a second launch starts
nothing; a later study reuses the baseline pre-training; failures propagate along the DAG."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from mae import track
from mae.config import flatten_config
from mae.schema import load_yaml
from mae.sweep.launch import launch, workdir_for
from mae.sweep.plan import Plan, plan_study
from mae.sweep.scale import load_scale
from mae.sweep.spec import StudySpec, parse_study, studies_dir

pytestmark = pytest.mark.slow  # whole studies, real stores and servers

# Paper label 100 epochs is 2 at the micro scale; evaluations get 2 epochs.
FAST = ["pretrain.epochs=100", "finetune.epochs=2", "linprobe.epochs=2"]


def study(name: str, sweep: dict, evaluations: list | None = None) -> StudySpec:
    """A real study file with its sweep trimmed to a few points (and optionally its evaluations)."""
    raw = load_yaml(studies_dir() / f"{name}.yaml")
    raw["sweep"] = sweep
    if evaluations is not None:
        raw["evaluations"] = evaluations
    return parse_study(raw, f"studies/{name}.yaml (trimmed)", name)


def planned(spec: StudySpec, uri: str, sets: list[str] = FAST) -> Plan:
    return plan_study(spec, load_scale("micro"), sets, tracking_uri=uri)


def tracked(uri: str) -> dict[str, dict]:
    """Every run of the micro experiment as a flat row, by content key."""
    frame = track.runs_frame(uri, "micro")
    return {row["tags.content_key"]: row for row in frame.to_dict("records")}


def artifacts(uri: str, run_id: str) -> set[str]:
    return {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id)}


def test_study_tracks_every_run_and_a_second_launch_starts_nothing(tracking_uri, runs_dir):
    spec = study("mask_ratio_sweep", {"masking.ratio": [0.75, 0.9]})
    plan = planned(spec, tracking_uri)
    assert [r.stage for r in plan.runs].count("pretrain") == 2 and len(plan.runs) == 6

    report = launch(plan, "debug", tracking_uri=tracking_uri, runs_dir=runs_dir)

    assert report.failed == [] and report.skipped == []
    assert sorted(report.finished) == sorted(r.name for r in plan.runs) == sorted(report.launched)
    rows = tracked(tracking_uri)
    assert set(rows) == {r.key for r in plan.runs}
    client = mlflow.MlflowClient(tracking_uri)
    for run in plan.runs:
        row = rows[run.key]
        assert row["status"] == "FINISHED", run.name
        assert (row["tags.stage"], row["tags.study"], row["tags.scale"]) == (
            run.stage,
            "mask_ratio_sweep",
            "micro",
        )
        assert row["run_name"] == run.name
        assert len(row["tags.git_commit"]) in (40, len("unknown"))
        for key, value in flatten_config(run.config).items():
            assert row[f"params.{key}"] == value, (run.name, key)
        assert row["params.label.masking.ratio"] == run.labels["masking.ratio"]
        assert row["params.label.decoder.depth"] == "8"  # the paper's label, micro's 2 blocks
        names = artifacts(tracking_uri, row["run_id"])
        assert {"config.json", "config.yaml", "checkpoint.txt"} <= names, run.name
        workdir = workdir_for(runs_dir, "micro", run.stage, run.key)
        pointer = client.download_artifacts(row["run_id"], "checkpoint.txt")
        assert Path(Path(pointer).read_text().strip()) == (workdir / "checkpoint.pt").resolve()
        assert (workdir / "checkpoint.pt").exists()
        if run.stage == "pretrain":
            assert "reconstruction.png" in names
            loss = row["metrics.final/pretrain/loss"]
            assert math.isfinite(loss) and 0 < loss < 5
            assert row["metrics.final/pretrain/epochs"] == 2
            steps = [m.step for m in client.get_metric_history(row["run_id"], "pretrain/loss")]
            assert steps == [1, 2]
        else:
            parent = rows[run.depends_on]
            assert row["tags.mlflow.parentRunId"] == parent["run_id"]
            assert row["tags.pretrain_key"] == run.depends_on
            top1 = row[f"metrics.final/{run.stage}/top1"]
            assert 0 <= top1 <= 100
            assert row[f"metrics.final/{run.stage}/top5"] >= top1

    again = planned(spec, tracking_uri)
    assert {r.status for r in again.runs} == {"finished"}
    assert {r.run_id for r in again.runs} == {row["run_id"] for row in rows.values()}
    second = launch(again, "debug", tracking_uri=tracking_uri, runs_dir=runs_dir)
    assert second.launched == [] and second.finished == [] and second.failed == []
    assert sorted(second.skipped) == sorted((r.name, "already finished") for r in plan.runs)
    assert len(track.runs_frame(tracking_uri, "micro")) == 6


def test_decoder_depth_reuses_the_baseline_of_mask_ratio_sweep(tracking_uri, runs_dir):
    ratio = study("mask_ratio_sweep", {"masking.ratio": [0.75]}, ["linprobe"])
    first = launch(
        planned(ratio, tracking_uri), "debug", tracking_uri=tracking_uri, runs_dir=runs_dir
    )
    assert first.ok and len(first.finished) == 2
    baseline = tracked(tracking_uri)

    depth = planned(study("decoder_depth", {"decoder.depth": [1, 8]}, ["linprobe"]), tracking_uri)
    status = {r.name: r.status for r in depth.runs}
    assert status == {
        "decoder_depth/depth=1/seed0/pretrain": "new",
        "decoder_depth/depth=1/seed0/linprobe": "new",
        "decoder_depth/depth=8/seed0/pretrain": "finished",
        "decoder_depth/depth=8/seed0/linprobe": "finished",
    }
    reused = [r for r in depth.runs if r.status == "finished"]
    assert {r.key for r in reused} == set(baseline)
    assert all(r.shared_with == ("mask_ratio_sweep",) for r in reused)

    second = launch(depth, "debug", tracking_uri=tracking_uri, runs_dir=runs_dir)

    assert sorted(second.launched) == [
        "decoder_depth/depth=1/seed0/linprobe",
        "decoder_depth/depth=1/seed0/pretrain",
    ]
    assert second.ok
    rows = tracked(tracking_uri)
    assert len(rows) == 4
    pretrains = [row for row in rows.values() if row["tags.stage"] == "pretrain"]
    assert sorted(row["params.label.decoder.depth"] for row in pretrains) == ["1", "8"]
    for key, row in baseline.items():  # untouched: same run, still the study that made it
        assert rows[key]["run_id"] == row["run_id"]
        assert rows[key]["tags.study"] == "mask_ratio_sweep"


def test_failed_pretraining_fails_its_evaluations_and_retries_only_when_asked(
    tracking_uri, runs_dir
):
    spec = study("mask_ratio_sweep", {"masking.ratio": [0.75]}, ["linprobe"])
    # a batch larger than the data set: no full batch, pre-training raises in its first epoch
    sets = [*FAST, "pretrain.batch_size=100000"]
    plan = planned(spec, tracking_uri, sets)
    pretrain, linprobe = plan.runs

    report = launch(plan, "debug", tracking_uri=tracking_uri, runs_dir=runs_dir)

    assert report.finished == []
    errors = dict(report.failed)
    assert (
        errors[pretrain.name].startswith("ValueError:")
        and "no full global batch" in errors[pretrain.name]
    )
    assert errors[linprobe.name] == f"not run: its pre-training {pretrain.name} failed"
    rows = tracked(tracking_uri)
    assert list(rows) == [pretrain.key] and rows[pretrain.key]["status"] == "FAILED"
    run_id = rows[pretrain.key]["run_id"]

    again = planned(spec, tracking_uri, sets)
    assert [r.status for r in again.runs] == ["failed", "new"]
    skipped = launch(again, "debug", tracking_uri=tracking_uri, runs_dir=runs_dir)
    assert skipped.launched == [] and skipped.failed == []
    assert dict(skipped.skipped) == {
        pretrain.name: "failed before; rerun with --retry-failed",
        linprobe.name: f"its pre-training {pretrain.name} failed before",
    }

    retried = launch(
        again, "debug", retry_failed=True, tracking_uri=tracking_uri, runs_dir=runs_dir
    )
    assert sorted(retried.launched) == sorted([pretrain.name, linprobe.name])
    assert len(retried.failed) == 2  # same config, same error, but in the same MLflow run
    rows = tracked(tracking_uri)
    assert list(rows) == [pretrain.key] and rows[pretrain.key]["run_id"] == run_id
    assert rows[pretrain.key]["status"] == "FAILED"


def test_pretrainings_share_one_tokenizer_run_and_a_rerun_reuses_it(tracking_uri, runs_dir):
    sets = [*FAST, "target.kind=dvae", "tokenizer.epochs=1"]
    spec = study("mask_ratio_sweep", {"masking.ratio": [0.75, 0.9]}, ["linprobe"])
    plan = planned(spec, tracking_uri, sets)
    tokenizer, *pretrains = [r for r in plan.runs if r.stage in ("tokenizer", "pretrain")]
    assert tokenizer.stage == "tokenizer" and len(pretrains) == 2
    assert {r.depends_on for r in pretrains} == {tokenizer.key}

    report = launch(plan, "debug", tracking_uri=tracking_uri, runs_dir=runs_dir)
    assert report.failed == [] and len(report.finished) == 5
    rows = tracked(tracking_uri)
    row = rows[tokenizer.key]
    assert (row["status"], row["tags.stage"]) == ("FINISHED", "tokenizer")
    assert row["metrics.final/tokenizer/perplexity"] > 1.0
    assert {"reconstruction.png", "config.json"} <= artifacts(tracking_uri, row["run_id"])
    workdir = workdir_for(runs_dir, "micro", "tokenizer", tokenizer.key)
    assert (workdir / "checkpoint.pt").exists()
    for run in pretrains:  # tagged with their tokenizer, not nested under it
        assert rows[run.key]["tags.tokenizer_key"] == tokenizer.key
        assert pd.isna(rows[run.key].get("tags.mlflow.parentRunId"))

    again = planned(spec, tracking_uri, sets)
    assert {r.status for r in again.runs} == {"finished"}
    assert launch(again, "debug", tracking_uri=tracking_uri, runs_dir=runs_dir).launched == []
    # Another point with the same tokenizer: only its own runs are new.
    more = planned(
        study("mask_ratio_sweep", {"masking.ratio": [0.5]}, ["linprobe"]), tracking_uri, sets
    )
    assert [(r.stage, r.status) for r in more.runs] == [
        ("tokenizer", "finished"),
        ("pretrain", "new"),
        ("linprobe", "new"),
    ]
    assert more.runs[0].key == tokenizer.key
    later = launch(more, "debug", tracking_uri=tracking_uri, runs_dir=runs_dir)
    assert later.failed == [] and len(later.launched) == 2


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_nothing_to_launch_touches_no_store(cluster, tmp_path):
    """A plan with nothing pending returns at once, without creating the store."""
    spec = study("mask_ratio_sweep", {"masking.ratio": [0.75]}, ["linprobe"])
    plan = plan_study(spec, load_scale("micro"), [*FAST, "decoder.depth=2"])  # none at micro
    assert {r.status for r in plan.runs} == {"unavailable"}
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    report = launch(plan, cluster, tracking_uri=uri, runs_dir=tmp_path / "runs")
    assert report.launched == [] and len(report.skipped) == 2
    assert all(why.startswith("unavailable: ") for _, why in report.skipped)
    assert not (tmp_path / "never.db").exists()
