"""mae.report over a real SQLite MLflow store of hand-made runs with known numbers.

The store holds seeds to average, a superseded re-run, a failed and a running run, a transfer
run and a run off by two axes (both must be left out), labels that differ from the scale's actual
config values, and cells with no run at all.
"""

from __future__ import annotations

import io
import itertools
import math
import shutil
import time

import matplotlib.image
import mlflow
import pandas as pd
import pytest

from mae import track
from mae.config import TABLE_AXES, ExperimentConfig, flatten_config
from mae.report import DEFINITION_IDS, DEFINITIONS, build_tables
from mae.report.cli import main
from mae.report.definitions import TABLE1_DEFAULTS, select
from mae.report.figures import draw
from mae.report.paper import PAPER
from mae.report.query import missing_cells, normalise, tables_from_frame
from mae.report.render import display_frame, to_csv, to_latex, to_markdown

SCALE = "tiny"
_keys = itertools.count()


def _add(
    uri, exp, stage, *, labels=None, final=None, latest=None, seed=0, status="FINISHED", params=None
) -> str:
    """One run as a job would log it: full config params, paper labels, final metrics."""
    values = flatten_config(ExperimentConfig())  # tiny-scale values: decoder.width 64, depth 2...
    wanted = {**TABLE1_DEFAULTS, **(labels or {})}
    values.update({f"label.{axis}": str(wanted[axis]) for axis in TABLE_AXES})
    values.update({"pretrain.seed": str(seed), **(params or {})})
    key = f"key{next(_keys)}"
    run_id = track.open_run(
        uri,
        exp,
        key=key,
        stage=stage,
        run_name=f"{stage} {key}",
        params=values,
        tags={"study": "handmade", "scale": SCALE, "pretrain_key": key},
    )
    logger = track.MlflowLogger(uri, run_id)
    if latest:
        logger.log_metrics(latest, step=3)
    if final:
        logger.log_final(final)
    track.finish_run(uri, run_id, status) if status != "RUNNING" else None
    time.sleep(0.002)  # distinct start times: the newest run of a seed wins
    return run_id


def _ft(v):
    return {"finetune/top1": v}


def _lin(v):
    return {"linprobe/top1": v}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    exp = track.init_store(uri, SCALE)
    ids: dict[str, object] = {}
    # Table 1 baseline: three pre-training seeds, ft for all three (seed 0 re-run), lin for two.
    for seed, wall, ips in ((0, 100.0, 50.0), (1, 110.0, 55.0), (2, 120.0, 60.0)):
        _add(
            uri,
            exp,
            "pretrain",
            seed=seed,
            final={"pretrain/wall_time_s": wall, "pretrain/images_per_s": ips},
        )
    superseded = _add(uri, exp, "finetune", seed=0, final=_ft(10.0))
    ids["baseline_ft"] = {
        _add(uri, exp, "finetune", seed=s, final=_ft(v))
        for s, v in ((0, 80.0), (1, 81.0), (2, 82.0))
    }
    ids["superseded"] = superseded
    for seed, v in ((0, 70.0), (1, 72.0)):
        _add(uri, exp, "linprobe", seed=seed, final=_lin(v))
    # Table 1a.
    _add(uri, exp, "finetune", labels={"decoder.depth": 1}, final=_ft(75.0))
    _add(uri, exp, "linprobe", labels={"decoder.depth": 1}, final=_lin(60.0))
    _add(uri, exp, "finetune", labels={"decoder.depth": 2}, latest=_ft(50.0), final=_ft(76.0))
    _add(uri, exp, "linprobe", labels={"decoder.depth": 2}, latest=_lin(62.0))  # no final/
    _add(uri, exp, "finetune", labels={"decoder.depth": 4}, final=_ft(99.0), status="FAILED")
    _add(uri, exp, "linprobe", labels={"decoder.depth": 4}, status="RUNNING")
    _add(
        uri,
        exp,
        "finetune",
        labels={"decoder.depth": 1},
        final=_ft(10.0),
        params={"finetune.dataset": "cifar10"},
    )  # transfer: not Table 1
    _add(
        uri,
        exp,
        "finetune",
        labels={"decoder.depth": 1, "data.augmentation": "none"},
        final=_ft(5.0),
    )  # two axes off the baseline: in no table
    # Table 1c and Table 2's w/ [M] row.
    _add(uri, exp, "finetune", labels={"encoder.mask_tokens": True}, final=_ft(70.0))
    _add(uri, exp, "linprobe", labels={"encoder.mask_tokens": True}, final=_lin(40.0))
    _add(
        uri,
        exp,
        "pretrain",
        labels={"encoder.mask_tokens": True},
        final={"pretrain/wall_time_s": 300.0, "pretrain/images_per_s": 20.0},
    )
    _add(uri, exp, "pretrain", labels={"decoder.depth": 1}, final={"pretrain/wall_time_s": 60.0})
    # Table 1d, 1f, Fig. 5, Fig. 7, Fig. 9, scratch.
    _add(uri, exp, "finetune", labels={"target.kind": "norm_pixel"}, final=_ft(83.0))
    _add(
        uri,
        exp,
        "finetune",
        labels={"masking.sampler": "block", "masking.ratio": 0.5},
        final=_ft(79.0),
    )
    _add(uri, exp, "linprobe", labels={"masking.sampler": "grid"}, final=_lin(50.0))
    _add(uri, exp, "finetune", labels={"masking.ratio": 0.5}, final=_ft(77.0))
    _add(uri, exp, "linprobe", labels={"masking.ratio": 0.5}, final=_lin(65.0))
    _add(uri, exp, "finetune", labels={"masking.ratio": 0.9}, final=_ft(78.0))
    _add(uri, exp, "finetune", labels={"pretrain.epochs": 100}, final=_ft(70.5))
    _add(uri, exp, "linprobe", labels={"pretrain.epochs": 100}, final=_lin(55.0))
    _add(uri, exp, "partial", params={"partial.blocks": "0.5"}, final={"partial/top1": 74.0})
    _add(uri, exp, "partial", params={"partial.blocks": "1.0"}, final={"partial/top1": 76.0})
    # Fig. 9's 0 blocks is the linear probe: a partial run at 0 blocks fills no cell.
    _add(uri, exp, "partial", params={"partial.blocks": "0.0"}, final={"partial/top1": 5.0})
    _add(uri, exp, "scratch", labels={"masking.ratio": 0.5}, final={"scratch/top1": 65.0})
    return {"uri": uri, "exp": exp, "ids": ids, "root": root}


@pytest.fixture(scope="module")
def tables(store) -> dict:
    return {r.definition.id: r for r in build_tables(store["uri"], SCALE)}


def _cell(tables, table, row, column):
    return tables[table].cell(row, column)


def test_every_definition_is_well_formed():
    assert len(set(DEFINITION_IDS)) == len(DEFINITIONS) == 11
    for d in DEFINITIONS:
        assert d.axes and set(d.axes) <= set(TABLE_AXES) | {"partial.blocks"} or d.id == "scratch"
        assert set(d.fixed) == set(TABLE_AXES)
        labels = [r.label for r in d.rows]
        assert len(set(labels)) == len(labels)
        assert d.baseline is None or d.baseline in labels
        for row in d.rows:
            assert set(row.values) == set(d.axes)
            required = d.required(row)
            assert set(TABLE_AXES) <= set(required) | set(d.axes)
    assert [d.id for d in select(["fig5", "table1a"])] == ["table1a", "fig5"]
    with pytest.raises(ValueError, match="allowed: table1a, table1b"):
        select(["table9"])


def test_normalise_spellings():
    assert normalise(0.75) == normalise("0.75") == normalise("0.750")
    assert normalise(8) == normalise("8.0") == normalise("8")
    assert normalise(True) == "True" and normalise("pixel") == "pixel"
    assert normalise(0.1 + 0.2) == normalise(0.3)


def test_table1a_cells_seeds_fallbacks_and_left_out_runs(tables, store):
    t = tables["table1a"]
    base = t.cell("8", "ft")
    assert (base.mean, base.std, base.n) == (81.0, 1.0, 3)
    assert set(base.run_ids) == store["ids"]["baseline_ft"]  # re-run of seed 0 replaces the old
    lin = t.cell("8", "lin")
    assert lin.mean == 71.0 and lin.n == 2 and math.isclose(lin.std, math.sqrt(2))
    assert (t.cell("1", "ft").mean, t.cell("1", "ft").n) == (75.0, 1)  # transfer, 2-axis left out
    assert t.cell("1", "ft").std is None
    assert t.cell("1", "lin").mean == 60.0
    assert t.cell("2", "ft").mean == 76.0  # final/ preferred over the latest value
    assert t.cell("2", "lin").mean == 62.0  # latest value when no final/ was logged
    for row in ("4", "12"):
        assert t.cell(row, "ft").missing and t.cell(row, "lin").missing
    assert t.missing == [("4", "ft"), ("4", "lin"), ("12", "ft"), ("12", "lin")]
    notes = t.footnotes()
    assert notes[0] == (
        "— no finished run yet for 4, 12: run `python studies/run.py decoder_depth --scale tiny`."
    )
    assert "Left out: 2 run(s) not finished (1 FAILED, 1 RUNNING)." in notes


def test_baseline_run_is_shared_by_every_table(tables, store):
    baselines = {
        "table1a": "8",
        "table1b": "512",
        "table1c": "encoder w/o [M]",
        "table1d": "pixel (w/o norm)",
        "table1e": "crop, rand size",
        "table1f": "random (75)",
        "fig5": "75",
        "fig7": "800",
    }
    for table, row in baselines.items():
        assert tables[table].definition.baseline == row
        cell = _cell(tables, table, row, "ft")
        assert set(cell.run_ids) == store["ids"]["baseline_ft"], table
        assert _cell(tables, table, row, "lin").mean == 71.0, table
    assert set(_cell(tables, "scratch", "ViT", "MAE ft").run_ids) == store["ids"]["baseline_ft"]
    assert _cell(tables, "table2", "w/o [M], 8", "ft").mean == 81.0


def test_other_tables_cells(tables):
    assert _cell(tables, "table1b", "512", "ft").mean == 81.0  # label 512, actual width 64
    for row in ("128", "256", "768", "1024"):
        assert _cell(tables, "table1b", row, "ft").missing
    assert (
        _cell(tables, "table1c", "encoder w/ [M]", "ft").mean,
        _cell(tables, "table1c", "encoder w/ [M]", "lin").mean,
    ) == (70.0, 40.0)
    assert _cell(tables, "table1d", "pixel (w/ norm)", "ft").mean == 83.0
    assert _cell(tables, "table1d", "pixel (w/ norm)", "lin").missing
    assert _cell(tables, "table1e", "none", "ft").missing  # the 2-axis run is not Table 1e's
    assert _cell(tables, "table1f", "block (50)", "ft").mean == 79.0
    assert _cell(tables, "table1f", "block (75)", "ft").missing
    assert _cell(tables, "table1f", "grid (75)", "lin").mean == 50.0
    assert _cell(tables, "fig5", "50", "ft").mean == 77.0
    assert _cell(tables, "fig5", "50", "lin").mean == 65.0
    assert _cell(tables, "fig5", "90", "ft").mean == 78.0
    assert _cell(tables, "fig5", "10", "ft").missing
    assert (_cell(tables, "fig7", "100", "ft").mean, _cell(tables, "fig7", "100", "lin").mean) == (
        70.5,
        55.0,
    )
    assert _cell(tables, "fig9", "0.5", "partial").mean == 74.0
    zero = _cell(tables, "fig9", "0", "partial")  # the baseline's linear probe, both seeds
    assert (zero.mean, zero.n) == (71.0, 2)
    assert zero.run_ids == _cell(tables, "table1a", "8", "lin").run_ids
    assert _cell(tables, "fig9", "1", "partial").mean == 76.0
    assert _cell(tables, "fig9", "24", "partial").missing
    assert _cell(tables, "scratch", "ViT", "scratch").mean == 65.0  # scratch ignores labels


def test_table2_wall_clock_and_speedup(tables):
    t = tables["table2"]
    assert t.cell("w/ [M], 8", "time").mean == 300.0
    assert (t.cell("w/o [M], 8", "time").mean, t.cell("w/o [M], 8", "time").n) == (110.0, 3)
    assert t.cell("w/o [M], 1", "time").mean == 60.0
    assert t.cell("w/o [M], 8", "images/s").mean == 55.0
    assert t.cell("w/ [M], 8", "speed-up").mean == 1.0
    assert math.isclose(t.cell("w/o [M], 8", "speed-up").mean, 300 / 110)
    assert t.cell("w/o [M], 1", "speed-up").mean == 5.0
    assert t.cell("w/o [M], 1", "ft").mean == 75.0  # the same runs as Table 1a's 1-block row


def test_missing_cells_name_whole_rows_then_the_rest_by_column():
    missing = [("10", "ft"), ("10", "lin"), ("75", "ft"), ("30", "ft"), ("30", "lin")]
    missing.append(("90", "ft"))
    assert missing_cells(missing, ["ft", "lin"]) == "10, 30; ft at 75, 90"
    assert missing_cells([("75", "lin")], ["lin"]) == "75"
    assert missing_cells([("75", "lin")], ["ft", "lin"]) == "lin at 75"


def test_missing_rows_and_approximate_values_in_footnotes(tables):
    notes = tables["table1d"].footnotes()
    assert notes[0] == (
        "— no finished run yet for PCA, dVAE token; lin at pixel (w/ norm): run "
        "`python studies/run.py reconstruction_target --scale tiny`."
    )
    assert notes[-1].startswith("PCA: the largest target.pca_components coefficients")
    assert any("approximate" in n and "Fig. 5 ft" in n for n in tables["fig5"].footnotes())
    assert not any("approximate" in n for n in tables["table1a"].footnotes())


# Independently typed from shared/paper_reference.md: (row, column) -> (value, confirmed).
REFERENCE = {
    "table1a": {
        "1": (84.8, 65.5),
        "2": (84.9, 70.0),
        "4": (84.9, 71.9),
        "8": (84.9, 73.5),
        "12": (84.4, 73.3),
    },
    "table1b": {
        "128": (84.9, 69.1),
        "256": (84.8, 71.3),
        "512": (84.9, 73.5),
        "768": (84.4, 73.1),
        "1024": (84.3, 73.1),
    },
    "table1c": {"encoder w/ [M]": (84.2, 59.6), "encoder w/o [M]": (84.9, 73.5)},
    "table1d": {
        "pixel (w/o norm)": (84.9, 73.5),
        "pixel (w/ norm)": (85.4, 73.9),
        "PCA": (84.6, 72.3),
        "dVAE token": (85.3, 71.6),
    },
    "table1e": {
        "none": (84.0, 65.7),
        "crop, fixed size": (84.7, 73.1),
        "crop, rand size": (84.9, 73.5),
        "crop + color jit": (84.3, 71.9),
    },
    "table1f": {
        "random (75)": (84.9, 73.5),
        "block (50)": (83.9, 72.3),
        "block (75)": (82.8, 63.9),
        "grid (75)": (84.0, 66.0),
    },
    "fig7": {
        "100": (82.3, 57.3),
        "200": (83.3, 64.4),
        "400": (84.3, 69.7),
        "800": (84.9, 73.5),
        "1600": (85.1, 75.1),
    },
}
FIG5_LIN = [54.6, 58.9, 61.7, 67.0, 69.9, 71.8, 73.2, 73.5, 71.8, 66.1]
FIG9 = {
    "0": 73.5,
    "0.5": 79.1,
    "1": 81.0,
    "2": 83.1,
    "4": 84.2,
    "6": 84.4,
    "12": 84.6,
    "18": 84.7,
    "24": 84.9,
}


def test_paper_column_equals_reference_data(tables):
    for table, rows in REFERENCE.items():
        frame = tables[table].frame().set_index(["row", "column"])
        for row, (ft, lin) in rows.items():
            assert frame.loc[(row, "ft"), "paper"] == ft and frame.loc[(row, "lin"), "paper"] == lin
        assert frame["paper_confirmed"].all()
    fig5 = tables["fig5"].frame()
    assert fig5[fig5.column == "lin"]["paper"].tolist() == FIG5_LIN
    assert fig5[fig5.column == "lin"]["paper_confirmed"].all()
    ft = fig5[fig5.column == "ft"].set_index("row")
    assert ft.loc["75", "paper"] == 84.9 and ft.loc["75", "paper_confirmed"]
    assert not ft.drop("75")["paper_confirmed"].any()  # the ratio mapping is unconfirmed
    assert ft.loc["90", "paper"] == 84.5
    fig9 = tables["fig9"].frame().set_index("row")
    assert fig9["paper"].to_dict() == FIG9
    assert [r for r, ok in fig9["paper_confirmed"].items() if not ok] == ["12", "18"]
    t2 = tables["table2"].frame().set_index(["row", "column"])
    assert [t2.loc[(r, "time"), "paper"] for r in ("w/ [M], 8", "w/o [M], 8", "w/o [M], 1")] == [
        42.4,
        15.4,
        11.6,
    ]
    assert t2.loc[("w/o [M], 1", "speed-up"), "paper"] == 3.7
    assert tables["scratch"].paper("ViT", "scratch").value == 82.5
    assert "82.6" in tables["scratch"].paper("ViT", "scratch").note
    # Every paper value belongs to a row and column that exists.
    for table, values in PAPER.items():
        d = next(x for x in DEFINITIONS if x.id == table)
        for row, column in values:
            assert row in [r.label for r in d.rows] and column in [c.name for c in d.columns]


def test_markdown_layout(tables):
    text = to_markdown(tables["table1a"])
    lines = text.splitlines()
    assert lines[0] == "### Table 1a: decoder depth"
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    # At a small scale, shapes compare (each row minus the ★ row), not values (ours − paper).
    assert header == [
        "blocks",
        "ft",
        "ft (paper)",
        "ft − ★",
        "ft − ★ (paper)",
        "lin",
        "lin (paper)",
        "lin − ★",
        "lin − ★ (paper)",
    ]
    rows = {
        c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[4:9])
    }
    assert rows["8 ★"] == [
        "8 ★",
        "81.0 ± 1.0 (n=3)",
        "84.9",
        "",
        "",
        "71.0 ± 1.4 (n=2)",
        "73.5",
    ] + [
        "",
        "",
    ]
    assert rows["1"] == ["1", "75.0", "84.8", "-6.0", "-0.1", "60.0", "65.5", "-11.0", "-8.0"]
    assert rows["12"] == ["12", "—", "84.4", "", "-0.5", "—", "73.3", "", "-0.2"]
    assert "- — no finished run yet for 4, 12" in text
    claim = next(line for line in text.splitlines() if "lin(8 blocks) > lin(1 block)" in line)
    assert "“A deep decoder can improve linear probing accuracy.”" in claim
    assert "+11.0" in claim and "missing (n=1: lin(1 block))" in claim  # ours from one seed
    assert "**Table 1a: 0 of 2 claims hold, 2 missing**" in text
    fig5 = display_frame(tables["fig5"])
    assert fig5.loc[fig5["ratio (%)"] == "50", "ft (paper)"].item() == "~84.7"
    assert fig5.loc[fig5["ratio (%)"] == "50", "ft − ★"].item() == "-4.0"
    assert fig5.loc[fig5["ratio (%)"] == "50", "ft − ★ (paper)"].item() == "~-0.2"
    t2 = display_frame(tables["table2"])
    assert list(t2.columns) == [
        "encoder, dec. depth",
        "ft",
        "ft (paper)",
        "ft − ★",
        "ft − ★ (paper)",
        "time [s]",
        "time (paper) [h]",
        "images/s",
        "speed-up",
        "speed-up (paper)",
    ]
    assert t2["speed-up"].tolist() == ["1.0×", "2.7×", "5.0×"]
    assert t2["speed-up (paper)"].tolist() == ["", "2.8×", "3.7×"]


def test_latex_is_booktabs_and_escaped(tables):
    tex = to_latex(tables["table1a"])
    for rule in (
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
        r"\caption{Table 1a",
        r"\label{tab:table1a}",
    ):
        assert rule in tex
    assert r"8 $\star$ & 81.0 $\pm$ 1.0 (n=3) & 84.9 &  &  & 71.0" in tex
    assert r"1 & 75.0 & 84.8 & -6.0 & -0.1 & 60.0" in tex
    assert r"ft $-$ $\star$ (paper)" in tex and r"\label{tab:table1a-claims}" in tex
    assert r"\texttt{python studies/run.py decoder\_depth --scale tiny}" in tex
    assert r"$\sim$84.7" in to_latex(tables["fig5"])
    assert "★" not in tex and "±" not in tex and "“" not in tex


def test_csv_round_trips_the_numbers(tables):
    frame = pd.read_csv(io.StringIO(to_csv(tables["table1a"])))
    base = frame[(frame.row == 8) & (frame.column == "ft")].iloc[0]
    assert (base["mean"], base["std"], base["n"], base["paper"]) == (81.0, 1.0, 3, 84.9)
    assert bool(base["baseline"]) and pd.isna(base["delta"])  # ours − paper: paper scale only
    one = frame[(frame.row == 1) & (frame.column == "ft")].iloc[0]
    assert math.isclose(one["vs_baseline"], -6.0) and math.isclose(one["paper_vs_baseline"], -0.1)
    missing = frame[(frame.row == 12) & (frame.column == "lin")].iloc[0]
    assert missing["n"] == 0 and pd.isna(missing["mean"]) and missing["paper"] == 73.3


def test_figure_has_ours_and_the_paper_on_panels_of_their_own(tables):
    fig = draw(tables["fig5"])
    axes = fig.get_axes()
    assert len(axes) == 4  # ft and lin columns: ours above, the paper's below
    ours_ft, ours_lin, paper_ft, paper_lin = axes
    assert ours_ft.get_title() == "ft" and ours_lin.get_title() == "lin"
    assert paper_ft.get_xlabel() == "masking ratio (%)"
    assert ours_ft.get_ylabel().startswith("ours") and paper_ft.get_ylabel().startswith("paper")
    ours_line = ours_ft.get_lines()[0]
    assert list(ours_line.get_xdata()) == [50.0, 75.0, 90.0]
    assert list(ours_line.get_ydata()) == [77.0, 81.0, 78.0]
    assert list(paper_lin.get_lines()[0].get_ydata()) == FIG5_LIN
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == {
        "ours (tiny): mean ± 95% CI",
        "one seed",
        "paper (ViT-L, IN-1K)",
        "paper, approximate",
    }
    fig9 = draw(tables["fig9"]).get_axes()[1]
    assert fig9.get_xticklabels()[0].get_text() == "0\n(linprobe)"


def test_cli_writes_everything_and_logs_a_report_run(store, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--scale", SCALE, "--tracking-uri", store["uri"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "### Table 1a: decoder depth" in printed and "| 8 ★" in printed
    assert "**Fig. 5: 0 of 5 claims hold, 5 missing**" in printed
    assert f"{out / 'fig5'}.png" in printed
    for table in DEFINITION_IDS:
        for suffix in ("md", "tex", "csv"):
            assert (out / f"{table}.{suffix}").stat().st_size > 0
    for figure in ("fig5", "fig7", "fig9"):
        image = matplotlib.image.imread(out / f"{figure}.png")
        assert image.shape[0] > 400 and image.shape[1] > 600
        assert (out / f"{figure}.pdf").read_bytes().startswith(b"%PDF")
    assert not (out / "table1a.png").exists()
    claims = pd.read_csv(out / "table1c-claims.csv")
    assert list(claims["verdict"]) == ["missing", "missing"]  # one seed of w/ [M]: no interval
    report = (out / "report.md").read_text()
    assert "# MAE ablations regenerated at the `tiny` scale" in report
    assert "experiment `mae-ablate/tiny` (33 runs: 31 FINISHED, 1 FAILED, 1 RUNNING)" in report
    assert report.index("## The paper's claims") < report.index("## Table 1a")
    assert "- Table 1c: 0 of 2 claims hold, 2 missing" in report
    assert "- runs in these tables: 27" in report
    commit = (
        mlflow.MlflowClient(store["uri"])
        .get_run(next(iter(store["ids"]["baseline_ft"])))
        .data.tags["git_commit"]
    )
    assert f"`{commit[:10]}` (27 runs)" in report
    assert "![Fig. 5: masking ratio](fig5.png)" in report and "## Table 2" in report

    client = mlflow.MlflowClient(store["uri"])
    reports = client.search_runs([store["exp"]], "tags.stage = 'report'")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    logged = {f.path for f in client.list_artifacts(reports[0].info.run_id, "report")}
    assert {"report/report.md", "report/fig5.png", "report/table1a.tex"} <= logged
    # A second regeneration updates the same report run and leaves the tables unchanged.
    assert (
        main(
            [
                "--scale",
                SCALE,
                "--tracking-uri",
                store["uri"],
                "--out",
                str(out),
                "--only",
                "table1a",
                "--format",
                "md",
            ]
        )
        == 0
    )
    assert len(client.search_runs([store["exp"]], "tags.stage = 'report'")) == 1
    again = {r.definition.id: r for r in build_tables(store["uri"], SCALE, ["table1a"])}
    assert again["table1a"].cell("8", "ft").mean == 81.0


def test_cli_bad_arguments_exit_2(store, tmp_path, capsys):
    uri = store["uri"]
    assert main(["--tracking-uri", uri, "--only", "table1a,table9", "--out", str(tmp_path)]) == 2
    assert "unknown table id 'table9'; allowed: table1a, table1b" in capsys.readouterr().err
    assert main(["--tracking-uri", uri, "--format", "md,docx", "--out", str(tmp_path)]) == 2
    assert "unknown format docx; allowed: md, tex, csv, png, pdf" in capsys.readouterr().err
    assert main(["--tracking-uri", uri, "--scale", "tinny", "--out", str(tmp_path)]) == 2
    assert "no runs at scale 'tinny'" in capsys.readouterr().err
    assert main(["--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path)]) == 2
    assert "cannot reach the MLflow server at http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["--bogus"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_empty_store_prints_dashes_and_exits_0(tmp_path, store, capsys):
    shutil.copy(store["root"] / "mlruns.db", tmp_path / "copy.db")  # migrated: no schema wait
    uri = f"sqlite:///{tmp_path / 'copy.db'}"
    track.init_store(uri, "micro")  # an empty experiment
    results = tables_from_frame(track.runs_frame(uri, "micro"), select(["fig5"]), "micro")
    assert all(cell.missing for cell in results[0].cells.values())
    out = tmp_path / "out"
    assert (
        main(
            [
                "--scale",
                "micro",
                "--tracking-uri",
                uri,
                "--only",
                "fig5",
                "--out",
                str(out),
                "--format",
                "md,csv",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "run `python studies/run.py mask_ratio_sweep --scale micro`" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "fig5-claims.csv",
        "fig5.csv",
        "fig5.md",
        "report.md",
    ]
