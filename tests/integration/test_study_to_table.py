"""The whole chain on real parts: a micro study file → `studies/run.py` (debug executor) →
a real SQLite MLflow store → `analysis/make_tables.py` → Table 1c, whose cells are the runs'
own numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mae import track
from mae.report.cli import main as make_tables
from mae.report.query import build_tables
from mae.sweep.cli import main as run_study

pytestmark = pytest.mark.slow  # whole studies, real stores and servers

# Evaluation epochs are not table labels; pre-training keeps micro's 800-epoch-label schedule.
FAST = ["finetune.epochs=2", "linprobe.epochs=2"]


@pytest.fixture
def finished_study(tracking_uri: str, runs_dir: Path) -> str:
    argv = ["mask_token", "--scale", "micro", "--cluster", "debug"]
    argv += ["--tracking-uri", tracking_uri, "--runs-dir", str(runs_dir)]
    for item in FAST:
        argv += ["--set", item]
    assert run_study(argv) == 0
    return tracking_uri


def test_micro_study_regenerates_its_table_from_the_real_runs(finished_study, tmp_path, capsys):
    uri = finished_study
    runs = track.runs_frame(uri, "micro")
    finished = runs[runs["status"] == "FINISHED"]
    assert sorted(finished["tags.stage"]) == ["finetune"] * 2 + ["linprobe"] * 2 + ["pretrain"] * 2

    (table,) = build_tables(uri, "micro", only=["table1c"])
    for row, with_tokens in (("encoder w/ [M]", "True"), ("encoder w/o [M]", "False")):
        for column, stage in (("ft", "finetune"), ("lin", "linprobe")):
            (run,) = finished[
                (finished["tags.stage"] == stage)
                & (finished["params.label.encoder.mask_tokens"] == with_tokens)
            ].to_dict("records")
            cell = table.cell(row, column)
            assert cell.n == 1 and cell.run_ids == (run["run_id"],)
            assert cell.mean == pytest.approx(run[f"metrics.final/{stage}/top1"])
    assert table.missing == []

    out = tmp_path / "out"
    code = make_tables(
        ["--scale", "micro", "--tracking-uri", uri, "--only", "table1c", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "encoder w/o [M]" in printed and "84.9" in printed  # ours beside the paper's value
    for suffix in ("md", "tex", "csv"):
        assert (out / f"table1c.{suffix}").stat().st_size > 0
    assert "Table 1c" in (out / "report.md").read_text()


def test_reconstruction_target_fills_every_row_of_table_1d(tracking_uri, runs_dir):
    """All four targets at micro, the dVAE one through its tokenizer run: Table 1d is complete."""
    argv = ["reconstruction_target", "--scale", "micro", "--cluster", "debug"]
    argv += ["--tracking-uri", tracking_uri, "--runs-dir", str(runs_dir)]
    for item in [*FAST, "tokenizer.epochs=2"]:
        argv += ["--set", item]
    assert run_study(argv) == 0

    runs = track.runs_frame(tracking_uri, "micro")
    finished = runs[runs["status"] == "FINISHED"]
    assert sorted(finished["tags.stage"]).count("tokenizer") == 1
    (table,) = build_tables(tracking_uri, "micro", only=["table1d"])
    assert table.missing == []
    for row in ("pixel (w/o norm)", "pixel (w/ norm)", "PCA", "dVAE token"):
        assert table.cell(row, "ft").n == 1 and table.cell(row, "lin").n == 1
    pca = finished[
        (finished["tags.stage"] == "pretrain") & (finished["params.target.kind"] == "pca")
    ]
    assert 0.5 < float(pca["metrics.final/pretrain/pca_explained_variance"].iloc[0]) < 1.0
