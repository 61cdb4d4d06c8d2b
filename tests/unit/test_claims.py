"""The paper's claims decided from synthetic run frames (no MLflow): verdicts, the choice of a
paired or a Welch interval and its agreement with scipy, the seeds estimate, Fig. 9's 0-block
point, shapes beside the paper's at small scales, and the claims in every output format."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from mae.config import TABLE_AXES
from mae.report.cell import Cell
from mae.report.claims import CLAIMS, Claim, Ref
from mae.report.definitions import DEFINITIONS, TABLE1_DEFAULTS, select
from mae.report.figures import draw
from mae.report.paper import paper_value
from mae.report.query import TableResult, tables_from_frame
from mae.report.render import claims_csv, display_frame, to_latex, to_markdown
from mae.report.render_claims import claims_frame
from mae.report.stats import compare, mean_interval, seeds_to_decide, t_quantile
from mae.report.verdicts import judge, summary

_ids = itertools.count()


def _run(stage: str, value: float, seed: int = 0, status: str = "FINISHED", **labels) -> dict:
    """One line of `runs_frame`: Table 1 defaults but for `labels` (dots as `__`)."""
    wanted = {**TABLE1_DEFAULTS, **{k.replace("__", "."): v for k, v in labels.items()}}
    metric = {"pretrain": "pretrain/wall_time_s"}.get(stage, f"{stage}/top1")
    index = next(_ids)
    line = {
        "run_id": f"run{index}",
        "status": status,
        "start_time": 1_700_000_000_000 + index,
        "end_time": 1_700_000_060_000 + index,
        "tags.stage": stage,
        "params.pretrain.seed": str(seed),
        f"params.{stage}.seed": str(seed),
        f"metrics.final/{metric}": value,
    }
    line |= {f"params.label.{a}": str(wanted[a]) for a in TABLE_AXES}
    if "partial.blocks" in wanted:
        line["params.partial.blocks"] = str(float(wanted["partial.blocks"]))
    return line


def _frame(lines: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(lines)
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    return frame


def _lin(ratio: float, values, seeds=None) -> list[dict]:
    seeds = range(len(values)) if seeds is None else seeds
    return [
        _run("linprobe", v, s, masking__ratio=ratio) for s, v in zip(seeds, values, strict=True)
    ]


def _fig5(lines: list[dict], scale: str = "tiny"):
    (result,) = tables_from_frame(_frame(lines), select(["fig5"]), scale)
    return result, {v.claim.text: v for v in result.verdicts}


BASE = [80.0, 81.0, 80.5]


def test_a_clear_difference_holds_and_is_paired_by_seed():
    result, verdicts = _fig5(_lin(0.75, BASE) + _lin(0.3, [70.0, 70.4, 69.9]))
    v = verdicts["lin(75%) > lin(30%)"]
    assert v.outcome == "holds" and v.label == "holds" and v.interval.test == "paired"
    expected = scipy_stats.ttest_rel(BASE, [70.0, 70.4, 69.9]).confidence_interval(0.95)
    assert (v.interval.low, v.interval.high) == pytest.approx(tuple(expected), rel=1e-12)
    assert v.estimate == pytest.approx(statistics_mean(BASE) - 70.1)
    assert v.paper.value == pytest.approx(73.5 - 61.7) and v.paper.confirmed
    assert v.seeds_needed is None


def statistics_mean(values) -> float:
    return sum(values) / len(values)


def test_equal_means_are_inconclusive_and_no_seed_count_decides():
    _, verdicts = _fig5(_lin(0.75, [70.0, 72.0, 71.0]) + _lin(0.3, [71.0, 70.0, 72.0]))
    v = verdicts["lin(75%) > lin(30%)"]
    assert v.estimate == 0 and v.outcome == "inconclusive" and v.label == "inconclusive (n=3)"
    assert v.seeds_needed is None  # no effect: no number of seeds clears a boundary at 0


def test_a_reversed_difference_is_contradicted():
    _, verdicts = _fig5(_lin(0.75, [60.0, 61.0, 60.2]) + _lin(0.9, [70.0, 70.5, 71.0]))
    v = verdicts["lin(75%) > lin(90%)"]
    assert v.outcome == "contradicted" and v.interval.high < 0


def test_a_missing_row_or_a_single_seed_is_missing():
    result, verdicts = _fig5(_lin(0.75, BASE) + _lin(0.3, [70.0]))
    v = verdicts["lin(75%) > lin(10%)"]
    assert v.outcome == "missing" and v.label == "missing (no run: lin(10%))"
    one = verdicts["lin(75%) > lin(30%)"]
    assert one.outcome == "missing" and one.label == "missing (n=1: lin(30%))"
    assert one.estimate == pytest.approx(statistics_mean(BASE) - 70.0)  # shown, not judged
    assert verdicts["ft(75%) > scratch"].label == "missing (no run: ft(75%), scratch)"
    assert summary("Fig. 5", result.verdicts) == "Fig. 5: 0 of 5 claims hold, 5 missing"


def test_rows_on_different_seeds_take_welch_and_match_scipy():
    other = [69.0, 71.5, 70.2, 70.8]
    _, verdicts = _fig5(_lin(0.75, BASE) + _lin(0.3, other, seeds=[3, 4, 5, 6]))
    v = verdicts["lin(75%) > lin(30%)"]
    assert v.interval.test == "Welch" and v.interval.n == (3, 4)
    expected = scipy_stats.ttest_ind(BASE, other, equal_var=False).confidence_interval(0.95)
    assert (v.interval.low, v.interval.high) == pytest.approx(tuple(expected), rel=1e-12)
    assert v.outcome == "holds"


def test_partly_shared_seeds_are_not_paired():
    left = Cell(mean=1.0, n=3, values={("0", "0"): 1.0, ("1", "1"): 2.0, ("2", "2"): 0.0})
    right = Cell(mean=0.5, n=2, values={("0", "0"): 0.0, ("1", "1"): 1.0})
    assert compare(left, right).test == "Welch"
    assert compare(left, Cell(mean=0.0, n=1, values={("0", "0"): 0.0})) is None


def test_scratch_is_never_paired_with_a_pretrained_row():
    ft = [_run("finetune", v, s) for s, v in enumerate([85.0, 85.4, 85.2])]
    scratch = [_run("scratch", v, s) for s, v in enumerate([80.0, 80.3, 79.9])]
    _, verdicts = _fig5(ft + scratch)
    v = verdicts["ft(75%) > scratch"]
    assert v.interval.test == "Welch" and v.outcome == "holds"
    assert v.paper.value == pytest.approx(84.9 - 82.5)


def _cells(left: list[float], right: list[float]) -> tuple[Cell, Cell]:
    def cell(values):
        keyed = {(str(i), str(i)): v for i, v in enumerate(values)}
        return Cell(mean=float(np.mean(values)), n=len(values), values=keyed)

    return cell(left), cell(right)


REF_A, REF_B = Ref("a", "lin", "a"), Ref("b", "lin", "b")


@pytest.mark.parametrize(
    ("relation", "margin", "left", "right", "outcome"),
    [
        ("≥", 0.5, [80.0, 80.1, 80.0], [80.2, 80.2, 80.1], "holds"),  # a 0.1 drop, within 0.5
        ("≥", 0.5, [78.0, 78.1, 78.0], [80.0, 80.1, 80.0], "contradicted"),  # a 2-point drop
        ("≥", 0.5, [79.0, 80.0, 79.6], [80.0, 80.1, 80.0], "inconclusive"),
        ("≫", 2.0, [85.0, 85.1, 85.2], [80.0, 80.1, 80.0], "holds"),
        ("≫", 2.0, [81.0, 81.1, 81.2], [80.0, 80.1, 80.0], "contradicted"),  # better, not by 2
        ("<", 0.0, [10.0, 11.0, 10.5], [30.0, 31.0, 30.2], "holds"),
        ("≈", 1.0, [80.0, 80.2, 80.1], [80.1, 80.0, 80.1], "holds"),
        ("≈", 1.0, [83.0, 83.2, 83.1], [80.1, 80.0, 80.1], "contradicted"),
    ],
)
def test_relations_and_margins(relation, margin, left, right, outcome):
    claim = Claim(REF_A, relation, REF_B, "words", margin)
    assert judge(claim, *_cells(left, right)).outcome == outcome


def test_seeds_estimate_is_where_the_half_width_clears_the_boundary():
    claim = Claim(REF_A, ">", REF_B, "words")
    left, right = [80.0, 81.5, 79.9], [79.5, 80.0, 80.3]
    v = judge(claim, *_cells(left, right))
    assert v.outcome == "inconclusive"
    n, sd = v.seeds_needed, v.interval.sds[0]

    def half(k):
        return scipy_stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)

    assert half(n) < abs(v.estimate) <= half(n - 1)
    (line,) = [x for x in to_markdown_claims(v) if "a > b" in x]
    assert f"~{n} per row ({n - 3} more)" in line
    a = Cell(1.0, None, 2, values={("0",): 0.0, ("1",): 2.0})
    b = Cell(0.25, None, 2, values={("2",): 0.0, ("3",): 0.5})
    w = judge(claim, a, b)
    assert w.interval.test == "Welch" and w.outcome == "inconclusive" and w.seeds_needed > 2
    assert seeds_to_decide(v.interval, 0.0) is None


def to_markdown_claims(verdict) -> list[str]:
    """The claims table of a one-claim result, as Markdown lines."""
    result = TableResult(select(["fig5"])[0], "tiny", {}, verdicts=(verdict,))
    return claims_frame(result).to_markdown(index=False).splitlines()


def test_mean_interval_and_quantile_equal_scipy():
    values = [77.9, 78.6, 77.1, 78.0]
    sem = scipy_stats.sem(values)
    expected = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sem)
    assert mean_interval(values) == pytest.approx(expected, rel=1e-12)
    assert mean_interval([1.0]) is None
    assert t_quantile(4) == pytest.approx(scipy_stats.t.ppf(0.975, 4), rel=1e-12)


def test_every_claim_names_real_cells_and_holds_on_the_paper_numbers():
    by_id = {d.id: d for d in DEFINITIONS}
    assert set(CLAIMS) <= set(by_id)
    for table, claims in CLAIMS.items():
        assert claims, table
        for claim in claims:
            assert claim.words and claim.margin >= 0
            values = []
            for ref in (claim.left, claim.right):
                d = by_id[ref.table or table]
                assert ref.row in [r.label for r in d.rows], (table, ref)
                assert ref.column in [c.name for c in d.columns], (table, ref)
                values.append(paper_value(d.id, ref.row, ref.column))
            low, high = claim.region
            assert low < values[0].value - values[1].value < high, (table, claim.text)


def test_fig9_zero_blocks_is_the_linear_probe_of_the_same_pretraining():
    lin = [_run("linprobe", v, s) for s, v in enumerate([70.0, 71.0, 70.5])]
    old_zero = [_run("partial", 99.0, s, partial__blocks=0) for s in range(3)]  # never read
    one = [_run("partial", v, s, partial__blocks=1) for s, v in enumerate([78.0, 79.0, 78.4])]
    # A linear probe off the Table 1 defaults must not fill the point.
    other = [_run("linprobe", 10.0, 0, masking__ratio=0.5)]
    (fig9,) = tables_from_frame(_frame(lin + old_zero + one + other), select(["fig9"]), "tiny")
    zero = fig9.cell("0", "partial")
    assert zero.mean == pytest.approx(70.5) and zero.n == 3
    assert set(zero.run_ids) == {line["run_id"] for line in lin}
    assert fig9.cell("1", "partial").mean == pytest.approx(78.4666, abs=1e-3)
    v = {v.claim.text: v for v in fig9.verdicts}["partial(1 block) ≫ lin (0 blocks) (by ≥ 2)"]
    assert v.interval.test == "paired" and v.outcome == "holds"
    assert fig9.definition.required(fig9.definition.rows[0], "linprobe") == dict(TABLE1_DEFAULTS)


def test_shapes_beside_the_paper_at_small_scales_values_only_at_paper_scale():
    lines = _lin(0.75, BASE) + _lin(0.3, [80.3, 81.3, 80.8])
    tiny, _ = _fig5(lines, "tiny")
    frame = display_frame(tiny).set_index("ratio (%)")
    assert "Δ lin" not in frame and "lin − ★" in frame
    assert frame.loc["30", "lin − ★"] == "+0.3" and frame.loc["30", "lin − ★ (paper)"] == "-11.8"
    assert frame.loc["75 ★", "lin − ★"] == ""
    assert frame.loc["30", "ft − ★ (paper)"] == "~-1.7"  # from approximate paper values
    numbers = tiny.frame().set_index(["row", "column"])
    assert numbers.loc[("30", "lin"), "vs_baseline"] == pytest.approx(0.3)
    assert numbers.loc[("30", "lin"), "paper_vs_baseline"] == pytest.approx(-11.8)
    assert numbers["delta"].isna().all()
    paper, _ = _fig5(lines, "paper")
    frame = display_frame(paper).set_index("ratio (%)")
    assert "lin − ★" not in frame and frame.loc["30", "Δ lin"] == "+19.1"


def test_claims_in_markdown_latex_and_csv():
    result, _ = _fig5(_lin(0.75, BASE) + _lin(0.3, [70.0, 70.4, 69.9]))
    text = to_markdown(result)
    assert "| lin(75%) > lin(30%)" in text and "(n=3, paired)" in text
    assert "“increases steadily with the masking ratio until the sweet point”" in text
    assert "**Fig. 5: 1 of 5 claims hold, 4 missing**" in text
    tex = to_latex(result)
    assert r"\label{tab:fig5-claims}" in tex and r"ft(50\%) $\geq$ ft(75\%)" in tex
    assert "≥" not in tex and "“" not in tex and r"\textbackslash" not in tex  # escaped once
    assert r"lin(75\%) $>$ lin(30\%)" in tex  # a text-mode > would print as ¿
    frame = pd.read_csv(io.StringIO(claims_csv(result)))
    line = frame[frame.claim == "lin(75%) > lin(30%)"].iloc[0]
    assert (line["verdict"], line["test"], line["n_left"]) == ("holds", "paired", 3)
    assert line["low"] > 0 and line["paper"] == pytest.approx(11.8)


def test_figure_draws_intervals_and_the_paper_on_its_own_axis_at_the_same_span():
    result, _ = _fig5(_lin(0.75, BASE) + _lin(0.3, [79.9, 80.6, 80.2]))
    ours_ft, ours_lin, paper_ft, paper_lin = draw(result).get_axes()
    (bars,) = [c for c in ours_lin.containers if hasattr(c, "has_yerr") and c.has_yerr]
    segments = bars.lines[2][0].get_segments()
    low, high = mean_interval(BASE)
    assert any(np.allclose(s[:, 1], [low, high]) for s in segments)
    span = np.diff(ours_lin.get_ylim())[0]
    assert span == pytest.approx(np.diff(paper_lin.get_ylim())[0])
    assert span >= 73.5 - 54.6  # ours is not stretched: the paper's 19-point rise sets the span
    assert paper_lin is not ours_lin and paper_lin.get_lines()[0].get_ydata()[0] == 54.6
