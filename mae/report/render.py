"""Tables as text: Markdown (the paper's layout, ours beside the paper with the delta), LaTeX
(booktabs, through pandas) and CSV (tidy numbers)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from mae.report.definitions import Column
from mae.report.paper import PaperValue
from mae.report.query import Cell, TableResult

MISSING = "—"


def _tex_escape(text: str) -> str:
    specials = {
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\^{}",
        "\\": r"\textbackslash{}",
    }
    escaped = "".join(specials.get(ch, ch) for ch in text)
    return re.sub(r"`([^`]+)`", r"\\texttt{\1}", escaped)


@dataclass(frozen=True)
class Style:
    missing: str
    star: str
    approx: str
    pm: str
    times: str
    delta: str
    escape: Callable[[str], str]


MARKDOWN = Style(
    missing=MISSING, star="★", approx="~", pm="±", times="×", delta="Δ", escape=lambda s: s
)
LATEX = Style(
    missing="---",
    star=r"$\star$",
    approx=r"$\sim$",
    pm=r"$\pm$",
    times=r"$\times$",
    delta=r"$\Delta$",
    escape=_tex_escape,
)


def _ours(cell: Cell, column: Column, style: Style) -> str:
    if cell.missing:
        return style.missing
    text = f"{cell.mean:.{column.digits}f}"
    if column.speedup_of:
        return text + style.times
    if cell.std is not None:
        text += f" {style.pm} {cell.std:.{column.digits}f} (n={cell.n})"
    return text


def _paper(ref: PaperValue | None, column: Column, style: Style) -> str:
    if ref is None:
        return ""
    text = f"{ref.value:.1f}" + (style.times if column.speedup_of else "")
    return text if ref.confirmed else style.approx + text


def _delta(cell: Cell, ref: PaperValue | None, column: Column, style: Style) -> str:
    if ref is None or cell.missing:
        return ""
    text = f"{cell.mean - ref.value:+.{column.digits}f}"
    return text if ref.confirmed else style.approx + text


def display_frame(result: TableResult, style: Style = MARKDOWN) -> pd.DataFrame:
    """The table as strings in the paper's layout: one line per ablation value, the baseline
    marked, each metric as ours | paper | delta (paper and delta only where the paper has one)."""
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
                    line[f"{style.delta} {style.escape(col.name)}"] = _delta(cell, ref, col, style)
        lines.append(line)
    return pd.DataFrame(lines)


def to_markdown(result: TableResult, heading: str = "###") -> str:
    table = display_frame(result, MARKDOWN).to_markdown(index=False, disable_numparse=True)
    notes = "\n".join(f"- {note}" for note in result.footnotes())
    return f"{heading} {result.definition.title}\n\n{table}\n" + (f"\n{notes}\n" if notes else "")


def to_latex(result: TableResult) -> str:
    frame = display_frame(result, LATEX)
    d = result.definition
    tex = frame.to_latex(
        index=False,
        escape=False,
        caption=_tex_escape(f"{d.title} (ours: {result.scale} scale; paper: ViT-L, ImageNet-1K)"),
        label=f"tab:{d.id}",
        column_format="l" + "r" * (frame.shape[1] - 1),
    )
    notes = " ".join(_tex_escape(n).replace("—", "---") for n in result.footnotes())
    if notes:
        tex = tex.replace("\\end{table}", f"\\par\\footnotesize {notes}\n\\end{{table}}")
    return tex


def to_csv(result: TableResult) -> str:
    return result.frame().to_csv(index=False)
