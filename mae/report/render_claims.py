"""A table's claims as text: one line per claim with the paper's words, our difference with its
interval, the paper's difference and the verdict; a summary line; tidy numbers for CSV."""

from __future__ import annotations

import pandas as pd

from mae.report.query import TableResult
from mae.report.stats import LEVEL, MAX_SEEDS
from mae.report.style import LATEX, MARKDOWN, Style, tex_escape
from mae.report.verdicts import Verdict, n_label, summary

SHORT_LEGEND = (
    f"{LEVEL:.0%} t-intervals over seeds, paired by seed or Welch; seeds to decide: an estimate."
)
LEGEND = (
    f"Ours: mean(left) − mean(right) over seeds, [{LEVEL:.0%} t-interval], paired by seed where "
    "both cells hold the same seeds, Welch otherwise. ≥ holds when the interval excludes a drop "
    "larger than its margin, ≫ when it lies above the margin. Seeds to decide: an estimate of the "
    "seeds per row at which the interval would clear the claim's boundary, were the observed "
    "difference and spread to stay."
)


def _digits(result: TableResult, verdict: Verdict) -> int:
    columns = {c.name: c for c in result.definition.columns}
    column = columns.get(verdict.claim.left.column)
    return column.digits if column else 1


def _ours(verdict: Verdict, digits: int, style: Style) -> str:
    def signed(x: float) -> str:
        return f"{x:+.{digits}f}"

    if verdict.interval is not None:
        i = verdict.interval
        return f"{signed(i.estimate)} [{signed(i.low)}, {signed(i.high)}] ({n_label(i)}, {i.test})"
    if verdict.estimate is not None:
        return signed(verdict.estimate)
    return style.missing


def _seeds(verdict: Verdict, style: Style) -> str:
    if verdict.outcome != "inconclusive":
        return ""
    if verdict.seeds_needed is None or verdict.interval is None:
        return f"> {MAX_SEEDS}"
    more = verdict.seeds_needed - min(verdict.interval.n)
    return f"{style.approx}{verdict.seeds_needed} per row ({more} more)"


def claims_frame(result: TableResult, style: Style = MARKDOWN) -> pd.DataFrame:
    """The claims as display strings, one line per claim (text escaped, symbols in `style`)."""
    esc, lines = style.escape, []
    for verdict in result.verdicts:
        digits = _digits(result, verdict)
        paper = ""
        if verdict.paper is not None:
            approx = "" if verdict.paper.confirmed else style.approx
            paper = f"{approx}{verdict.paper.value:+.1f}"  # the paper's precision
        lines.append(
            {
                "claim": esc(verdict.claim.text),
                "paper's words": esc(verdict.claim.words),
                esc(f"ours: diff [{LEVEL:.0%} CI]"): _ours(verdict, digits, style),
                "paper": paper,
                "verdict": esc(verdict.label),
                "seeds to decide (est.)": _seeds(verdict, style),
            }
        )
    return pd.DataFrame(lines)


_COUNTS = ("n_left", "n_right", "seeds_to_decide")  # whole numbers, blank where there is none


def claims_numbers(result: TableResult) -> pd.DataFrame:
    """Tidy numbers, one line per claim, for CSV."""
    lines = []
    for v in result.verdicts:
        c, i = v.claim, v.interval
        lines.append(
            {
                "table": result.definition.id,
                "claim": c.text,
                "left": c.left.name,
                "relation": c.relation,
                "right": c.right.name,
                "margin": c.margin,
                "words": c.words,
                "estimate": v.estimate,
                "low": i.low if i else None,
                "high": i.high if i else None,
                "test": i.test if i else None,
                "n_left": i.n[0] if i else None,
                "n_right": i.n[1] if i else None,
                "paper": v.paper.value if v.paper else None,
                "paper_confirmed": v.paper.confirmed if v.paper else None,
                "verdict": v.outcome,
                "detail": v.label,
                "seeds_to_decide": v.seeds_needed,
            }
        )
    frame = pd.DataFrame(lines)
    return frame.astype(dict.fromkeys(_COUNTS, "Int64")) if lines else frame


def claims_markdown(result: TableResult) -> str:
    """The claims table, its summary line and the legend; empty when the table has no claims."""
    if not result.verdicts:
        return ""
    table = claims_frame(result, MARKDOWN).to_markdown(index=False, disable_numparse=True)
    line = summary(result.definition.name, result.verdicts)
    return f"Claims:\n\n{table}\n\n**{line}** ({SHORT_LEGEND})\n"


def claims_latex(result: TableResult) -> str:
    if not result.verdicts:
        return ""
    d = result.definition
    frame = claims_frame(result, LATEX)
    return frame.to_latex(
        index=False,
        escape=False,
        caption=tex_escape(f"{summary(d.name, result.verdicts)}. {LEGEND}"),
        label=f"tab:{d.id}-claims",
        column_format="p{3.2cm}p{4.2cm}p{3.6cm}rp{2.6cm}r",
    )
