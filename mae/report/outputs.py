"""Write the regenerated tables and figures to a folder, gather them in `report.md`, and keep a
copy as the artifacts of a `report` run so they can be browsed in the MLflow UI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mae import track
from mae.report.figures import plot
from mae.report.query import TableResult
from mae.report.render import to_csv, to_latex, to_markdown

FORMATS = ("md", "tex", "csv", "png", "pdf")
FIGURE_FORMATS = ("png", "pdf")
REPORT_STAGE = "report"


def write_outputs(results: Sequence[TableResult], out: Path, formats: Iterable[str]) -> list[Path]:
    """`<id>.md|tex|csv` for every table, `<id>.png|pdf` for every figure; returns the files."""
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
    lines += [
        "",
        f"Ours: accuracies (top-1 %) at the `{scale}` scale, mean ± std over seeds when n > 1. "
        "Paper: ViT-L/16 on ImageNet-1K. Compare the shapes, not the values; Δ = ours − paper. "
        "★ marks the default row, ~ an approximate paper value, — a cell without finished runs.",
        "",
    ]
    for result in results:
        lines.append(to_markdown(result, heading="##"))
        if figures and result.definition.kind == "figure":
            lines += [f"![{result.definition.title}]({result.definition.id}.png)", ""]
    return "\n".join(lines)


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
