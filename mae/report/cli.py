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

log = logging.getLogger("mae.report")


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
    parser.add_argument("--only", help=f"comma-separated ids: {','.join(DEFINITION_IDS)}")
    parser.add_argument(
        "--format",
        default=",".join(FORMATS),
        help=f"comma-separated output formats: {','.join(FORMATS)}",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (analysis/out)")
    return parser


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _fail(message: str) -> int:
    print(f"make_tables: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed why
        return int(exc.code or 0)
    try:
        definitions = select(_split(args.only))
    except ValueError as exc:
        return _fail(str(exc))
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
    out = args.out or project_root() / "analysis" / "out"
    files = write_outputs(results, out, formats)
    if "md" in formats:
        report = out / "report.md"
        report.write_text(
            report_markdown(
                results, scale=args.scale, uri=uri, all_runs=frame, figures="png" in formats
            )
        )
        files.append(report)
    run_id = log_report_run(uri, args.scale, files) if files else None
    print(
        f"wrote {len(files)} files to {out}" + (f" (MLflow report run {run_id})" if run_id else "")
    )
    for result in results:
        if result.definition.kind == "figure" and "png" in formats:
            print(f"{result.definition.title}: {out / result.definition.id}.png")
    return 0
