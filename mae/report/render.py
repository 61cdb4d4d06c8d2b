"""Tables as text: Markdown (the paper's layout, ours beside the paper, then the claims), LaTeX
(booktabs, through pandas) and CSV (tidy numbers).

Ours and the paper's values compare only at the paper scale (a Δ = ours − paper column); at any
other scale each row's difference from the baseline row (★) stands beside the paper's: shapes
compare across data sets, values do not.
"""

from __future__ import annotations

import pandas as pd

from mae.report.cell import Cell
from mae.report.definitions import Column
from mae.report.paper import PaperValue
from mae.report.query import TableResult
from mae.report.render_claims import claims_latex, claims_markdown, claims_numbers
from mae.report.style import LATEX, MARKDOWN, Style, tex_escape


def _ours(cell: Cell, column: Column, style: Style) -> str:
    if cell.missing:
        return style.missing
    text = f"{cell.mean:.{column.digits}f}"
    if column.speedup_of:
        return text + style.times
    if cell.std is not None:
        text += f" {style.pm} {cell.std:.{column.digits}f} (n={cell.n})"
    return text


def _paper(ref: PaperValue | None, column: Column, style: Style, signed: bool = False) -> str:
    if ref is None:
        return ""
    text = f"{ref.value:{'+' if signed else ''}.1f}" + (style.times if column.speedup_of else "")
    return text if ref.confirmed else style.approx + text


def _delta(cell: Cell, ref: PaperValue | None, column: Column, style: Style) -> str:
    if ref is None or cell.missing:
        return ""
    text = f"{cell.mean - ref.value:+.{column.digits}f}"
    return text if ref.confirmed else style.approx + text


def _comparison(result: TableResult, row: str, col: Column, style: Style) -> dict[str, str]:
    """Ours − paper at the paper scale; elsewhere ours − ★ beside the paper's − ★."""
    if result.values_compare:
        cell, ref = result.cell(row, col.name), result.paper(row, col.name)
        return {f"{style.delta} {style.escape(col.name)}": _delta(cell, ref, col, style)}
    if result.definition.baseline is None:
        return {}
    ours = result.vs_baseline(row, col.name)
    paper = result.paper_vs_baseline(row, col.name)
    return {
        style.escape(f"{col.name} − ★"): "" if ours is None else f"{ours:+.{col.digits}f}",
        style.escape(f"{col.name} − ★ (paper)"): _paper(paper, col, style, signed=True),
    }


def display_frame(result: TableResult, style: Style = MARKDOWN) -> pd.DataFrame:
    """The table as strings in the paper's layout: one line per ablation value, the baseline
    marked, each metric as ours | paper | comparison (where the paper has a value)."""
    d = result.definition
    with_paper = {c.name for c in d.columns if any(result.paper(r.label, c.name) for r in d.rows)}
    lines = []
    for row in d.rows:
        label = style.escape(row.label) + (f" {style.star}" if row.label == d.baseline else "")
        line = {style.escape(d.header): label}
        for col in d.columns:
            cell, ref = result.cell(row.label, col.name), result.paper(row.label, col.name)
            line[style.escape(col.title)] = _ours(cell, col, style)
            if col.name in with_paper:
                line[style.escape(col.paper_title)] = _paper(ref, col, style)
                if col.delta:
                    line.update(_comparison(result, row.label, col, style))
        lines.append(line)
    return pd.DataFrame(lines)


def to_markdown(result: TableResult, heading: str = "###") -> str:
    table = display_frame(result, MARKDOWN).to_markdown(index=False, disable_numparse=True)
    notes = "\n".join(f"- {note}" for note in result.footnotes())
    claims = claims_markdown(result)
    return (
        f"{heading} {result.definition.title}\n\n{table}\n"
        + (f"\n{notes}\n" if notes else "")
        + (f"\n{claims}" if claims else "")
    )


def to_latex(result: TableResult) -> str:
    frame = display_frame(result, LATEX)
    d = result.definition
    tex = frame.to_latex(
        index=False,
        escape=False,
        caption=tex_escape(f"{d.title} (ours: {result.scale} scale; paper: ViT-L, ImageNet-1K)"),
        label=f"tab:{d.id}",
        column_format="l" + "r" * (frame.shape[1] - 1),
    )
    notes = " ".join(tex_escape(n) for n in result.footnotes())
    if notes:
        tex = tex.replace("\\end{table}", f"\\par\\footnotesize {notes}\n\\end{{table}}")
    claims = claims_latex(result)
    return tex + (f"\n{claims}" if claims else "")


def to_csv(result: TableResult) -> str:
    return result.frame().to_csv(index=False)


def claims_csv(result: TableResult) -> str:
    return claims_numbers(result).to_csv(index=False)
