"""Figures 5, 7 and 9 in the paper's style: our curve and the paper's on one plot, each on its own
y axis (our small-scale accuracies and ImageNet's differ in scale; the shapes are what compare)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from matplotlib import style
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mae.report.definitions import Column
from mae.report.query import TableResult

OURS_COLOR = "tab:blue"
PAPER_COLOR = "0.35"
# seaborn's whitegrid style and paper context as matplotlib ships them: the same look without
# importing seaborn (and scipy.stats and pyplot through it), a second of every report.
SEABORN_STYLE = ("seaborn-v0_8-whitegrid", "seaborn-v0_8-paper")


def _positions(result: TableResult) -> list[float]:
    d = result.definition
    if d.x_scale == "category":
        return [float(i) for i in range(len(d.rows))]
    return [float(r.x if r.x is not None else i) for i, r in enumerate(d.rows)]


def _draw_ours(ax: Axes, result: TableResult, column: Column, xs: list[float]) -> None:
    d = result.definition
    ours = [(x, result.cell(r.label, column.name)) for x, r in zip(xs, d.rows, strict=True)]
    ours = [(x, c) for x, c in ours if not c.missing]
    if not ours:
        ax.text(
            0.5,
            0.5,
            f"no runs yet:\npython studies/run.py {d.study}",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color=OURS_COLOR,
            fontsize=8,
        )
        return
    ax.errorbar(
        [x for x, _ in ours],
        [c.mean for _, c in ours],
        yerr=[c.std or 0.0 for _, c in ours],
        color=OURS_COLOR,
        marker="o",
        capsize=3,
        label=f"ours ({result.scale})",
    )
    for x, c in ours:
        ax.annotate(
            f"{c.mean:.1f}",
            (x, c.mean),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
            color=OURS_COLOR,
        )


def _draw_paper(ax: Axes, result: TableResult, column: Column, xs: list[float]) -> Axes:
    """The paper's curve on a twin y axis of its own; returns that axis."""
    d = result.definition
    paper = [(x, result.paper(r.label, column.name)) for x, r in zip(xs, d.rows, strict=True)]
    paper = [(x, p) for x, p in paper if p is not None]
    twin = ax.twinx()
    twin.grid(False)
    if not paper:
        return twin
    twin.plot(
        [x for x, _ in paper],
        [p.value for _, p in paper],
        color=PAPER_COLOR,
        linestyle="--",
        marker="s",
        label="paper (ViT-L, IN-1K)",
    )
    approx = [(x, p.value) for x, p in paper if not p.confirmed]
    if approx:
        twin.scatter(
            *zip(*approx, strict=True),
            marker="s",
            facecolors="white",
            edgecolors=PAPER_COLOR,
            zorder=3,
            label="paper, approximate",
        )
    return twin


def _panel(ax: Axes, result: TableResult, column: Column) -> None:
    d = result.definition
    xs = _positions(result)
    _draw_ours(ax, result, column, xs)
    twin = _draw_paper(ax, result, column, xs)
    if d.baseline is not None:
        base_x = xs[[r.label for r in d.rows].index(d.baseline)]
        ax.axvline(base_x, color="0.8", linestyle=":", zorder=0)
    if d.x_scale == "log":
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [r.label for r in d.rows])
    ax.minorticks_off()
    ax.set_xlabel(d.x_label)
    ax.set_ylabel(f"ours: {column.title} top-1 (%)", color=OURS_COLOR)
    twin.set_ylabel(f"paper: {column.title} top-1 (%)", color=PAPER_COLOR)
    ax.set_title(column.title)


def draw(result: TableResult) -> Figure:
    """One panel per metric column (ft and lin for Fig. 5 and 7), each with a twin y axis."""
    columns = [c for c in result.definition.columns if c.metric]
    width = 4.6 * len(columns)
    fig = Figure(figsize=(width, 4.2))
    # Fixed margins (0.8 in each side for the two y labels, the legend below) instead of a
    # layout engine, which doubles the drawing time.
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.8 / width, bottom=0.25, top=0.85, wspace=0.55)
    for ax, column in zip(fig.subplots(1, len(columns), squeeze=False)[0], columns, strict=True):
        _panel(ax, result, column)
    legend: dict[str, object] = {}  # one entry per curve over all panels and their twin axes
    for ax in fig.get_axes():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(
            list(legend.values()), list(legend), loc="lower center", ncol=len(legend), frameon=False
        )
    fig.suptitle(f"{result.definition.title}: ours ({result.scale} scale) vs. paper")
    return fig


def plot(result: TableResult, stem: Path, formats: Iterable[str] = ("png", "pdf")) -> list[Path]:
    """Draw the figure and save it as `<stem>.<format>`; returns the files written."""
    paths = [stem.with_suffix(f".{fmt}") for fmt in formats]
    with style.context(SEABORN_STYLE):
        fig = draw(result)
        for path in paths:
            fig.savefig(path, dpi=150)
    return paths
