"""Write the regenerated tables and figures to a folder, gather them in `report.md`, and keep a
copy as the artifacts of a `report` run so they can be browsed in the MLflow UI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mae import track
from mae.report.figures import plot
from mae.report.query import PAPER_SCALE, TableResult
from mae.report.render import claims_csv, to_csv, to_latex, to_markdown
from mae.report.render_claims import LEGEND
from mae.report.verdicts import OUTCOMES, counts, summary

FORMATS = ("md", "tex", "csv", "png", "pdf")
FIGURE_FORMATS = ("png", "pdf")
REPORT_STAGE = "report"


def write_outputs(results: Sequence[TableResult], out: Path, formats: Iterable[str]) -> list[Path]:
    """`<id>.md|tex|csv` for every table (the claims inside Markdown and LaTeX, beside CSV as
    `<id>-claims.csv`), `<id>.png|pdf` for every figure; returns the files."""
    formats = set(formats)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    renderers = {"md": to_markdown, "tex": to_latex, "csv": to_csv}
    for result in results:
        stem = out / result.definition.id
        for fmt, render in renderers.items():
            if fmt in formats:
                path = stem.with_suffix(f".{fmt}")
                path.write_text(render(result))
                written.append(path)
        if "csv" in formats and result.verdicts:
            path = out / f"{result.definition.id}-claims.csv"
            path.write_text(claims_csv(result))
            written.append(path)
        figure_formats = [f for f in FIGURE_FORMATS if f in formats]
        if result.definition.kind == "figure" and figure_formats:
            written.extend(plot(result, stem, figure_formats))
    return written


def _counts(values: pd.Series) -> list[tuple[str, int]]:
    """Most frequent first, ties by name: the same store always prints the same line."""
    return sorted(values.value_counts().items(), key=lambda item: (-item[1], item[0]))


def _when(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def report_markdown(
    results: Sequence[TableResult], *, scale: str, uri: str, all_runs: pd.DataFrame, figures: bool
) -> str:
    """Everything on one page, with where the numbers come from: store, runs, dates, commits."""
    runs = pd.concat([r.runs for r in results if not r.runs.empty] or [pd.DataFrame()])
    runs = runs.drop_duplicates("run_id") if not runs.empty else runs
    tracked = all_runs[all_runs.get("tags.stage", pd.Series(dtype=object)) != REPORT_STAGE]
    lines = [
        f"# MAE ablations regenerated at the `{scale}` scale",
        "",
        f"- generated: {_when(pd.Timestamp(datetime.now(UTC)))}",
        f"- tracking store: `{uri}`, experiment `{track.experiment_name(scale)}` "
        f"({len(tracked)} runs: "
        + ", ".join(f"{n} {s}" for s, n in _counts(tracked["status"]))
        + ")",
        f"- runs in these tables: {len(runs)}",
    ]
    if not runs.empty:
        last = runs["end_time"].fillna(runs["start_time"]).max()
        lines.append(f"- dates: {_when(runs['start_time'].min())} to {_when(last)}")
        commits = runs.get("tags.git_commit", pd.Series(dtype=object)).fillna("unknown")
        lines.append(
            "- code commits: " + ", ".join(f"`{c[:10]}` ({n} runs)" for c, n in _counts(commits))
        )
    lines += ["", *_verdict_summary(results), "", _how_to_read(scale), ""]
    for result in results:
        lines.append(to_markdown(result, heading="##"))
        if figures and result.definition.kind == "figure":
            lines += [f"![{result.definition.title}]({result.definition.id}.png)", ""]
    return "\n".join(lines)


def _verdict_summary(results: Sequence[TableResult]) -> list[str]:
    """The claims' verdicts across tables: a total, then one line per table."""
    judged = [r for r in results if r.verdicts]
    if not judged:
        return []
    tally = counts(v for r in judged for v in r.verdicts)
    total = ", ".join(f"{tally[o]} {o}" for o in OUTCOMES if tally[o])
    lines = ["## The paper's claims", "", f"{sum(tally.values())} claims: {total}.", ""]
    lines += [f"- {summary(r.definition.name, r.verdicts)}" for r in judged]
    return [*lines, "", LEGEND]


def _how_to_read(scale: str) -> str:
    common = (
        "Paper: ViT-L/16 on ImageNet-1K. ★ marks the default row, ~ an approximate paper "
        "value, — a cell without finished runs."
    )
    ours = f"Ours: accuracies (top-1 %) at the `{scale}` scale, mean ± std over seeds when n > 1."
    if scale == PAPER_SCALE:
        return f"{ours} {common} Δ = ours − paper."
    return (
        f"{ours} {common} Values do not compare across data sets, shapes do: each row's "
        "difference from the ★ row, ours (`ft − ★`) beside the paper's (`ft − ★ (paper)`)."
    )


def log_report_run(uri: str, scale: str, files: Iterable[Path]) -> str:
    """Attach the files to the scale's `report` run (one run, updated on every regeneration)."""
    experiment_id = track.init_store(uri, scale)
    run_id = track.open_run(
        uri,
        experiment_id,
        key=f"{REPORT_STAGE}/{scale}",
        stage=REPORT_STAGE,
        run_name=f"report {scale}",
        params={},
        tags={"scale": scale, "study": REPORT_STAGE},
    )
    logger = track.MlflowLogger(uri, run_id)
    try:
        for path in files:
            logger.log_artifact(path, REPORT_STAGE)
    except Exception:
        track.finish_run(uri, run_id, "FAILED")
        raise
    track.finish_run(uri, run_id, "FINISHED")
    return run_id
