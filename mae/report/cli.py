"""`make_tables` / `mae-tables`: regenerate the paper's tables and figures from tracked runs.

Exit codes: 0 done (missing cells are reported, not errors), 2 bad argument or unusable store.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mae import track
from mae.paths import project_root
from mae.report.definitions import DEFINITION_IDS, select
from mae.report.outputs import FORMATS, log_report_run, report_markdown, write_outputs
from mae.report.query import tables_from_frame
from mae.report.render import to_markdown
from mae.report.search import SearchResult, search_results, write_search
from mae.report.search import to_markdown as search_markdown

log = logging.getLogger("mae.report")

SEARCH_ID = "search"  # the Optuna searches of the scale (mae.report.search), beside the tables


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_tables",
        description="Regenerate the MAE paper's ablation tables and figures from MLflow runs.",
    )
    parser.add_argument("--scale", default="tiny", help="experiment mae-ablate/<scale> (tiny)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlruns.db)",
    )
    ids = ",".join((*DEFINITION_IDS, SEARCH_ID))
    parser.add_argument("--only", help=f"comma-separated ids: {ids}")
    parser.add_argument(
        "--format",
        default=",".join(FORMATS),
        help=f"comma-separated output formats: {','.join(FORMATS)}",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (analysis/out)")
    return parser


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _newest(searches: list[SearchResult]) -> list[SearchResult]:
    """One per search name: the newest (an earlier space or recipe is an older study)."""
    return list({s.name: s for s in reversed(searches)}.values())[::-1]


def _fail(message: str) -> int:
    print(f"make_tables: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed why
        return int(exc.code or 0)
    only = _split(args.only)
    try:
        definitions = select([i for i in only if i != SEARCH_ID] if only else None)
    except ValueError as exc:
        return _fail(f"{exc}, {SEARCH_ID}")
    formats = _split(args.format) or []
    if unknown := [f for f in formats if f not in FORMATS]:
        return _fail(f"unknown format {', '.join(unknown)}; allowed: {', '.join(FORMATS)}")
    uri = track.resolve_tracking_uri(args.tracking_uri)
    try:
        if track.find_experiment(uri, args.scale) is None and (scales := track.tracked_scales(uri)):
            return _fail(
                f"no runs at scale {args.scale!r} in {uri}; tracked scales: {', '.join(scales)}"
            )
        frame = track.runs_frame(uri, args.scale)
    except track.TrackingError as exc:
        return _fail(str(exc))

    results = tables_from_frame(frame, definitions, args.scale)
    for result in results:
        print(to_markdown(result))
    searches = _newest(search_results(frame)) if only is None or SEARCH_ID in only else []
    for search in searches:
        print(search_markdown(search))
    if only is not None and SEARCH_ID in only and not searches:
        print(f"no search at scale {args.scale}: python studies/run.py finetune_search")
    out = args.out or project_root() / "analysis" / "out"
    files = write_outputs(results, out, formats) + write_search(searches, out, formats)
    if "md" in formats:
        report = out / "report.md"
        figures = "png" in formats
        text = report_markdown(results, scale=args.scale, uri=uri, all_runs=frame, figures=figures)
        report.write_text(text + "".join(search_markdown(s, figure=figures) for s in searches))
        files.append(report)
    run_id = log_report_run(uri, args.scale, files) if files else None
    print(
        f"wrote {len(files)} files to {out}" + (f" (MLflow report run {run_id})" if run_id else "")
    )
    for result in results:
        if result.definition.kind == "figure" and "png" in formats:
            print(f"{result.definition.title}: {out / result.definition.id}.png")
    return 0
