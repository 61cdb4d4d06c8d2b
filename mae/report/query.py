"""Fill the table definitions from a frame of tracked runs (`mae.track.runs_frame`), and decide
each table's claims from the cells.

A cell is every finished run of the column's stage whose labels match the row; seeds are
aggregated as mean ± std (n = number of seeds, the newest run per seed) and kept one value per
seed for the claims' intervals; failed and unfinished runs are left out and counted for a footnote.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mae.report.cell import Cell, Seed
from mae.report.claims import Ref, claims_of
from mae.report.definitions import DEFINITIONS, QUERY_AXES, Column, Definition, Row, select
from mae.report.paper import PaperValue, paper_value
from mae.report.verdicts import Verdict, judge_all
from mae.track import runs_frame

RUN_COLUMNS = ("run_id", "status", "start_time", "end_time", "tags.git_commit")
PAPER_SCALE = "paper"  # the one scale whose values compare with the paper's


@dataclass
class TableResult:
    definition: Definition
    scale: str
    cells: dict[tuple[str, str], Cell] = field(repr=False)  # (row label, column name) -> ours
    ignored: Counter[str] = field(default_factory=Counter)  # status -> runs left out
    runs: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # runs filling cells
    verdicts: tuple[Verdict, ...] = ()  # the paper's claims about this table, decided

    def cell(self, row: str, column: str) -> Cell:
        return self.cells.get((row, column), Cell())

    def paper(self, row: str, column: str) -> PaperValue | None:
        return paper_value(self.definition.id, row, column)

    @property
    def values_compare(self) -> bool:
        """Only at the paper's scale do our values compare with the paper's (ours − paper);
        elsewhere shapes do: each row's difference from the baseline row, ours and the paper's."""
        return self.scale == PAPER_SCALE

    def vs_baseline(self, row: str, column: str) -> float | None:
        base = self.definition.baseline
        ours, ref = self.cell(row, column), self.cell(base, column) if base else Cell()
        return None if ours.missing or ref.missing or row == base else ours.mean - ref.mean

    def paper_vs_baseline(self, row: str, column: str) -> PaperValue | None:
        base = self.definition.baseline
        ours, ref = self.paper(row, column), self.paper(base, column) if base else None
        if ours is None or ref is None or row == base:
            return None
        return PaperValue(ours.value - ref.value, ours.confirmed and ref.confirmed)

    @property
    def missing(self) -> list[tuple[str, str]]:
        d = self.definition
        return [
            (r.label, c.name)
            for r in d.rows
            for c in d.columns
            if self.cell(r.label, c.name).missing
        ]

    def frame(self) -> pd.DataFrame:
        """Tidy numbers: one line per (row, column) with ours, the paper's, each one's difference
        from the baseline row, and ours − paper (`delta`, at the paper scale only)."""
        lines = []
        for row in self.definition.rows:
            for col in self.definition.columns:
                ours, ref = self.cell(row.label, col.name), self.paper(row.label, col.name)
                paper_shape = self.paper_vs_baseline(row.label, col.name)
                compare = ref and not ours.missing and self.values_compare
                lines.append(
                    {
                        "table": self.definition.id,
                        "row": row.label,
                        "baseline": row.label == self.definition.baseline,
                        "column": col.name,
                        "mean": ours.mean,
                        "std": ours.std,
                        "n": ours.n,
                        "paper": ref.value if ref else None,
                        "paper_confirmed": ref.confirmed if ref else None,
                        "vs_baseline": self.vs_baseline(row.label, col.name),
                        "paper_vs_baseline": paper_shape.value if paper_shape else None,
                        "delta": ours.mean - ref.value if compare else None,
                        "runs": " ".join(ours.run_ids),
                    }
                )
        return pd.DataFrame(lines)

    def footnotes(self) -> list[str]:
        d, notes = self.definition, []
        if missing := self.missing:  # a property that walks every cell: read once
            cells = missing_cells(missing, (c.name for c in d.columns))
            notes.append(
                f"— no finished run yet for {cells}: run "
                f"`python studies/run.py {d.study} --scale {self.scale}`."
            )
        if self.ignored:
            counts = ", ".join(f"{n} {status}" for status, n in sorted(self.ignored.items()))
            notes.append(f"Left out: {sum(self.ignored.values())} run(s) not finished ({counts}).")
        approx = {
            ref.note
            for r in d.rows
            for c in d.columns
            if (ref := self.paper(r.label, c.name)) and not ref.confirmed
        }
        notes.extend(f"~ approximate paper value: {note}." for note in sorted(approx))
        if d.note:
            notes.append(d.note)
        return notes


# --------------------------------------------------------------------------- matching


def normalise(value: Any) -> str:
    """One spelling per value: '0.75' and 0.75, '8' and '8.0', True and 'True' compare equal."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(round(number, 9)) if math.isfinite(number) else text


def _coalesce(frame: pd.DataFrame, first: str, then: str) -> pd.Series:
    """Column `first` where set, else column `then` (either may be absent)."""
    out = pd.Series(None, index=frame.index, dtype=object)
    for name in (then, first):
        if name in frame:
            out = frame[name].astype(object).where(frame[name].notna(), out)
    return out


class _Runs:
    """The few columns a query reads, as numpy arrays, computed once for all tables: filtering
    the wide frame (one column per param) for every cell is what makes a naive query slow."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.run_id = frame["run_id"].to_numpy(dtype=object)
        self.finished = (frame["status"] == "FINISHED").to_numpy(dtype=bool)
        self.status = frame["status"].to_numpy(dtype=object)
        self.start = frame["start_time"].astype("int64").to_numpy()
        stage = frame["tags.stage"] if "tags.stage" in frame else pd.Series(None, index=frame.index)
        self.stage = stage.to_numpy(dtype=object)
        # A run's value on an axis is its paper label when it logged one, else its config param.
        self.axes = {
            axis: _coalesce(frame, f"params.label.{axis}", f"params.{axis}")
            .map(normalise, na_action="ignore")
            .to_numpy(dtype=object)
            for axis in QUERY_AXES
        }

    def in_stage(self, stage: str) -> np.ndarray:
        """Runs of `stage` on the default evaluation data (transfer runs set `<stage>.dataset`)."""
        mask = self.stage == stage
        dataset = f"params.{stage}.dataset"
        if stage != "pretrain" and dataset in self.frame:
            mask &= self.frame[dataset].fillna("None").eq("None").to_numpy(dtype=bool)
        return mask

    def metric(self, name: str) -> np.ndarray:
        """`final/<name>` where logged, else the latest `<name>`."""
        values = _coalesce(self.frame, f"metrics.final/{name}", f"metrics.{name}")
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)

    def seeds(self, stage: str) -> list[Seed]:
        """What makes two runs of one cell different seeds rather than a re-run: the seeds the
        run depends on (a from-scratch run has no pre-training, a pre-training no evaluation)."""
        sections = [s for s in ("pretrain", stage) if not (s == "pretrain" and stage == "scratch")]
        names = [c for c in dict.fromkeys(f"params.{s}.seed" for s in sections) if c in self.frame]
        return list(self.frame[names].astype(str).itertuples(index=False, name=None))

    def matching(self, definition: Definition, row: Row, column: Column) -> np.ndarray:
        mask = np.ones(len(self.run_id), dtype=bool)
        if column.labelled:
            for axis, value in definition.required(row, column.stage).items():
                mask &= self.axes[axis] == normalise(value)
        return mask


def _aggregate(runs: _Runs, index: np.ndarray, values: np.ndarray, seeds: list[Seed]) -> Cell:
    """Newest run per seed, then mean ± std over seeds."""
    newest: dict[Seed, int] = {}
    for i in index:
        if math.isnan(values[i]):
            continue
        if seeds[i] not in newest or runs.start[i] > runs.start[newest[seeds[i]]]:
            newest[seeds[i]] = i
    chosen = sorted(newest.values(), key=lambda i: runs.start[i])
    if not chosen:
        return Cell()
    numbers = [float(values[i]) for i in chosen]
    return Cell(
        mean=statistics.fmean(numbers),
        std=statistics.stdev(numbers) if len(numbers) > 1 else None,
        n=len(numbers),
        run_ids=tuple(runs.run_id[i] for i in chosen),
        values={seeds[i]: float(values[i]) for i in chosen},
    )


class _Filler:
    """Fills cells from the runs, reading each stage's metric and seeds once."""

    def __init__(self, runs: _Runs):
        self.runs = runs
        self._stage: dict[str, tuple[np.ndarray, list[Seed]]] = {}
        self._metric: dict[str, np.ndarray] = {}

    def cell(self, definition: Definition, row: Row, column: Column) -> tuple[Cell, dict]:
        """The cell and {run_id: status} of the matching runs left out (not finished)."""
        runs, source = self.runs, definition.source(row, column)
        if source.stage not in self._stage:
            self._stage[source.stage] = (runs.in_stage(source.stage), runs.seeds(source.stage))
        if source.metric not in self._metric:
            self._metric[source.metric] = runs.metric(source.metric)
        in_stage, seeds = self._stage[source.stage]
        match = in_stage & runs.matching(definition, row, source)
        left_out = match & ~runs.finished
        ignored = dict(zip(runs.run_id[left_out], runs.status[left_out], strict=True))
        finished = np.flatnonzero(match & runs.finished)
        return _aggregate(runs, finished, self._metric[source.metric], seeds), ignored

    def ref(self, definition: Definition, cells: dict, ref: Ref) -> Cell:
        """A claim's cell: of this table, or of the definition it names (filled on demand)."""
        if ref.table is None or ref.table == definition.id:
            return cells.get((ref.row, ref.column), Cell())
        other = next(d for d in DEFINITIONS if d.id == ref.table)
        row = next(r for r in other.rows if r.label == ref.row)
        column = next(c for c in other.columns if c.name == ref.column)
        return self.cell(other, row, column)[0]


def _fill(
    definition: Definition, filler: _Filler
) -> tuple[dict[tuple[str, str], Cell], Counter[str], set[str]]:
    cells: dict[tuple[str, str], Cell] = {}
    ignored: dict[str, str] = {}
    for column in (c for c in definition.columns if c.metric):
        for row in definition.rows:
            cell, left_out = filler.cell(definition, row, column)
            cells[(row.label, column.name)] = cell
            ignored.update(left_out)
    used = {run_id for cell in cells.values() for run_id in cell.run_ids}
    for column in (c for c in definition.columns if c.speedup_of):
        cells.update(_speedups(definition, column, cells))
    return cells, Counter(ignored.values()), used


def _speedups(definition: Definition, column: Column, cells) -> dict[tuple[str, str], Cell]:
    base = cells.get((definition.baseline, column.speedup_of), Cell())
    out = {}
    for row in definition.rows:
        this = cells.get((row.label, column.speedup_of), Cell())
        if base.missing or this.missing or not this.mean:
            out[(row.label, column.name)] = Cell()
        else:
            out[(row.label, column.name)] = Cell(mean=base.mean / this.mean, n=min(base.n, this.n))
    return out


def _paper_of(definition: Definition, ref: Ref) -> PaperValue | None:
    return paper_value(ref.table or definition.id, ref.row, ref.column)


def tables_from_frame(
    frame: pd.DataFrame, definitions: Iterable[Definition], scale: str
) -> list[TableResult]:
    """Pure: the same frame gives the same tables. `frame` is `runs_frame`'s output."""
    filler = _Filler(_Runs(frame))
    results = []
    for definition in definitions:
        cells, ignored, used = _fill(definition, filler)
        used_runs = frame.loc[frame["run_id"].isin(used), [c for c in RUN_COLUMNS if c in frame]]
        verdicts = judge_all(
            claims_of(definition.id),
            lambda ref, d=definition, c=cells: filler.ref(d, c, ref),
            lambda ref, d=definition: _paper_of(d, ref),
        )
        results.append(
            TableResult(
                definition, scale, cells, ignored, used_runs.reset_index(drop=True), verdicts
            )
        )
    return results


def build_tables(uri: str, scale: str, only: Iterable[str] | None = None) -> list[TableResult]:
    """Query the scale's experiment in `uri` and fill the named tables (all when `only` is None)."""
    definitions = select(only)
    return tables_from_frame(runs_frame(uri, scale), definitions, scale)


def missing_cells(missing: list[tuple[str, str]], columns: Iterable[str]) -> str:
    """Rows that miss every column by name, then the rest by column: "4, 12; ft at 75, 90"."""
    every = set(columns)
    by_row: dict[str, set[str]] = {}
    for row, col in missing:
        by_row.setdefault(row, set()).add(col)
    whole = [row for row, cols in by_row.items() if cols == every]
    parts = [", ".join(whole)] if whole else []
    for col in dict.fromkeys(col for _, col in missing):
        rows = [row for row, cols in by_row.items() if col in cols and row not in whole]
        if rows:
            parts.append(f"{col} at {', '.join(rows)}")
    return "; ".join(parts)
