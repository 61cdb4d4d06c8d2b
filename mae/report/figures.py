"""Figures 5, 7 and 9 in the paper's style: per metric, our curve above (mean ± 95% t-interval
over seeds, each seed a dot) and the paper's below, on its own axis. Both panels span the same
number of points, so neither a 0.3-point wiggle of ours nor the paper's 20-point rise is
stretched to fill the plot: shapes compare at one vertical scale, values sit on their own axes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from matplotlib import style
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mae.report.definitions import Column
from mae.report.query import TableResult
from mae.report.stats import mean_interval

OURS_COLOR = "tab:blue"
PAPER_COLOR = "0.35"
MIN_SPAN = 1.0  # points: the least y range a panel shows
HEADROOM = 1.3  # the y range is this times the larger data range of the two panels
# seaborn's whitegrid style and paper context as matplotlib ships them: the same look without
# importing seaborn (and scipy.stats through it, about a second of every report).
SEABORN_STYLE = ("seaborn-v0_8-whitegrid", "seaborn-v0_8-paper")

Extent = tuple[float, float]


def _positions(result: TableResult) -> list[float]:
    d = result.definition
    if d.x_scale == "category":
        return [float(i) for i in range(len(d.rows))]
    return [float(r.x if r.x is not None else i) for i, r in enumerate(d.rows)]


def _no_runs(ax: Axes, study: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"no runs yet:\npython studies/run.py {study}",
        transform=ax.transAxes,
        ha="center",
        va="center",
        color=OURS_COLOR,
        fontsize=8,
    )


def _draw_ours(ax: Axes, result: TableResult, column: Column, xs: list[float]) -> Extent | None:
    """Means with 95% t-intervals (n ≥ 2) and every seed; returns the y extent drawn."""
    d = result.definition
    cells = [(x, result.cell(r.label, column.name)) for x, r in zip(xs, d.rows, strict=True)]
    cells = [(x, c) for x, c in cells if not c.missing]
    if not cells:
        _no_runs(ax, d.study)
        return None
    means = [c.mean for _, c in cells]
    bounds = [mean_interval(list(c.values.values())) or (c.mean, c.mean) for _, c in cells]
    ax.errorbar(
        [x for x, _ in cells],
        means,
        yerr=[
            [m - lo for m, (lo, _) in zip(means, bounds, strict=True)],
            [hi - m for m, (_, hi) in zip(means, bounds, strict=True)],
        ],
        color=OURS_COLOR,
        marker="o",
        capsize=3,
        label=f"ours ({result.scale}): mean ± 95% CI",
    )
    seeds = [(x, v) for x, c in cells for v in c.values.values()]
    if seeds:
        ax.scatter(*zip(*seeds, strict=True), s=9, color=OURS_COLOR, alpha=0.4, label="one seed")
    for (x, c), (_, hi) in zip(cells, bounds, strict=True):
        ax.annotate(
            f"{c.mean:.1f}",
            (x, hi),
            textcoords="offset points",
            xytext=(0, 5),
            ha="center",
            fontsize=7,
            color=OURS_COLOR,
        )
    ys = [y for b in bounds for y in b] + [v for _, v in seeds]
    return min(ys), max(ys)


def _draw_paper(ax: Axes, result: TableResult, column: Column, xs: list[float]) -> Extent | None:
    d = result.definition
    paper = [(x, result.paper(r.label, column.name)) for x, r in zip(xs, d.rows, strict=True)]
    paper = [(x, p) for x, p in paper if p is not None]
    if not paper:
        return None
    ax.plot(
        [x for x, _ in paper],
        [p.value for _, p in paper],
        color=PAPER_COLOR,
        linestyle="--",
        marker="s",
        label="paper (ViT-L, IN-1K)",
    )
    approx = [(x, p.value) for x, p in paper if not p.confirmed]
    if approx:
        ax.scatter(
            *zip(*approx, strict=True),
            marker="s",
            facecolors="white",
            edgecolors=PAPER_COLOR,
            zorder=3,
            label="paper, approximate",
        )
    return min(p.value for _, p in paper), max(p.value for _, p in paper)


def _same_span(pairs: list[tuple[Axes, Extent | None]]) -> None:
    """Give every panel the same y range in points, centred on its own data."""
    drawn = [(ax, e) for ax, e in pairs if e is not None]
    span = HEADROOM * max([MIN_SPAN] + [hi - lo for _, (lo, hi) in drawn])
    for ax, (lo, hi) in drawn:
        middle = (lo + hi) / 2
        ax.set_ylim(middle - span / 2, middle + span / 2)


def _column(ours: Axes, paper: Axes, result: TableResult, column: Column) -> None:
    d = result.definition
    xs = _positions(result)
    extents = [
        (ours, _draw_ours(ours, result, column, xs)),
        (paper, _draw_paper(paper, result, column, xs)),
    ]
    _same_span(extents)
    ticks = [
        r.label + (f"\n({r.sources[column.name].stage})" if column.name in r.sources else "")
        for r in d.rows
    ]
    for ax in (ours, paper):
        if d.baseline is not None:
            ax.axvline(xs[[r.label for r in d.rows].index(d.baseline)], color="0.8", ls=":")
        if d.x_scale == "log":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, ticks)
        ax.minorticks_off()
    paper.set_xlabel(d.x_label)
    ours.set_ylabel(f"ours: {column.title} top-1 (%)", color=OURS_COLOR)
    paper.set_ylabel(f"paper: {column.title} top-1 (%)", color=PAPER_COLOR)
    ours.set_title(column.title)


def draw(result: TableResult) -> Figure:
    """One column of panels per metric (ft and lin for Fig. 5 and 7): ours above, paper below."""
    columns = [c for c in result.definition.columns if c.metric]
    width = 4.6 * len(columns)
    fig = Figure(figsize=(width, 6.4))
    # Fixed margins instead of a layout engine, which doubles the drawing time.
    fig.subplots_adjust(
        left=0.7 / width, right=1 - 0.2 / width, bottom=0.17, top=0.89, wspace=0.35, hspace=0.08
    )
    grid = fig.subplots(2, len(columns), squeeze=False, sharex="col")
    for index, column in enumerate(columns):
        _column(grid[0][index], grid[1][index], result, column)
    legend: dict[str, object] = {}  # one entry per curve over all panels
    for ax in fig.get_axes():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(
            list(legend.values()),
            list(legend),
            loc="lower center",
            ncol=len(legend) if len(columns) > 1 else 2,
            frameon=False,
        )
    fig.suptitle(
        f"{result.definition.title}\nours ({result.scale}) above, paper below: same y span"
    )
    return fig


def plot(result: TableResult, stem: Path, formats: Iterable[str] = ("png", "pdf")) -> list[Path]:
    """Draw the figure and save it as `<stem>.<format>`; returns the files written."""
    paths = [stem.with_suffix(f".{fmt}") for fmt in formats]
    with style.context(SEABORN_STYLE):
        fig = draw(result)
        for path in paths:
            fig.savefig(path, dpi=150)
    return paths
