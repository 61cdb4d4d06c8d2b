"""The search report (`make_tables --only search`): for each Optuna search of the scale, its best
parameters beside the scale's recipe with their importances, trials by state, the optimisation
history as a PNG, and the test top-1 of the best parameters beside the default recipe's.

Everything is read from MLflow (`mae.track.runs_frame`): the search's run (stage `search`), its
trials' nested runs (stage `trial`) and the two evaluation runs it names in its tags.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import style
from matplotlib.figure import Figure
from tabulate import tabulate

from mae.report.figures import OURS_COLOR, PAPER_COLOR, SEABORN_STYLE

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


@dataclass
class SearchResult:
    """One search run and what hangs off it, as plain rows of `runs_frame`."""

    search: dict[str, Any]
    trials: pd.DataFrame
    best: dict[str, Any] | None = None
    default: dict[str, Any] | None = None
    states: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return str(self.search.get("tags.search"))

    @property
    def protocol(self) -> str:
        return str(self.search.get("tags.protocol"))

    @property
    def metric(self) -> str:
        return str(self.search.get("params.search.metric"))

    @property
    def stem(self) -> str:
        return f"search_{self.name}"

    def values(self) -> pd.DataFrame:
        """Trials with a value: number, state, value (the last reported for pruned trials)."""
        column = f"metrics.final/{self.metric}"
        rows = self.trials.assign(
            number=pd.to_numeric(self.trials["tags.trial_number"]),
            state=self.trials["tags.trial_state"],
            value=pd.to_numeric(self.trials.get(column, pd.Series(index=self.trials.index))),
        )
        return rows[["number", "state", "value"]].dropna().sort_values("number")

    def params(self) -> list[tuple[str, Any, Any, float | None]]:
        """(parameter, best value, default recipe's value, importance) of every parameter."""
        out = []
        for key in sorted(k for k in self.search if k.startswith("params.search.space.")):
            name = key.removeprefix("params.search.space.")
            default = (self.default or {}).get(f"params.{self.protocol}.{name}")
            weight = self.search.get(f"metrics.importance/{name}")
            out.append((name, self.search.get(f"tags.best.{name}"), default, _number(weight)))
        return sorted(out, key=lambda row: -(row[3] or 0.0))


def _number(value: Any) -> float | None:
    number = pd.to_numeric(value, errors="coerce")
    return None if pd.isna(number) else float(number)


def _row(frame: pd.DataFrame, run_id: Any) -> dict[str, Any] | None:
    rows = frame[frame["run_id"] == run_id]
    return rows.iloc[0].to_dict() if len(rows) else None


def search_results(frame: pd.DataFrame) -> list[SearchResult]:
    """Every search run of the frame (newest first) with its trials and evaluation runs."""
    stage = frame.get("tags.stage", pd.Series(index=frame.index, dtype=object))
    parent = frame.get("tags.mlflow.parentRunId", pd.Series(index=frame.index, dtype=object))
    results = []
    for _, search in frame[stage == "search"].sort_values("start_time", ascending=False).iterrows():
        row = search.to_dict()
        trials = frame[(stage == "trial") & (parent == row["run_id"])]
        states = Counter(trials.get("tags.trial_state", pd.Series(dtype=object)).dropna())
        results.append(
            SearchResult(
                search=row,
                trials=trials,
                best=_row(frame, row.get("tags.best_eval_run")),
                default=_row(frame, row.get("tags.default_eval_run")),
                states=states,
            )
        )
    return results


def _fmt(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "—" if value is None or pd.isna(value) else str(value)
    return f"{number:.4g}"


def comparison(result: SearchResult) -> list[tuple[str, str, str]]:
    """(recipe, validation top-1, test top-1) of the best parameters and the default recipe."""
    rows = []
    for label, run in (("best parameters", result.best), ("default recipe", result.default)):
        run = run or {}
        val = run.get(f"metrics.final/{result.protocol}/val_top1")
        test = run.get(f"metrics.final/{result.protocol}/top1")
        rows.append((label, _fmt(val), _fmt(test)))
    return rows


def verdict(result: SearchResult) -> str:
    """Whether to use the search's parameters, judged as they were chosen: on validation. The
    best-parameters file is written either way; this line says when it is not worth using."""
    val = f"metrics.final/{result.protocol}/val_top1"
    best = _number((result.best or {}).get(val))
    default = _number((result.default or {}).get(val))
    if best is None or default is None:
        return (
            "Verdict: missing (the best parameters or the default recipe has no validation top-1)."
        )
    if best <= default:
        return (
            f"Verdict: the search found nothing better than the default recipe on validation "
            f"({best:.2f} against {default:.2f}): keep the default recipe."
        )
    return (
        f"Verdict: the best parameters beat the default recipe on validation by "
        f"{best - default:+.2f} points ({best:.2f} against {default:.2f}; one run each, so a "
        f"difference within seed-to-seed spread is not a result)."
    )


def to_markdown(result: SearchResult, heading: str = "##", figure: bool = False) -> str:
    search = result.search
    states = ", ".join(f"{result.states[s]} {s}" for s in STATES if result.states[s])
    best = search.get("tags.best_trial")
    lines = [
        f"{heading} Search `{result.name}`: {result.protocol} hyper-parameters",
        "",
        f"Optuna study `{search.get('tags.optuna_study')}` in "
        f"`{search.get('tags.optuna_storage')}`; search run `{search['run_id']}` "
        f"({search['status']}); trials: {states or 'none'}; objective: maximize "
        f"{result.metric}, chosen on validation only (best trial #{best}).",
        "",
        tabulate(
            comparison(result),
            headers=("recipe", "val top-1", "test top-1"),
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
        verdict(result),
        "",
        f"Importances (Optuna's default evaluator) from the {result.states['COMPLETE']} "
        "complete trials; pruned trials do not enter them.",
        "",
        tabulate(
            [(n, _fmt(b), _fmt(d), _fmt(w)) for n, b, d, w in result.params()],
            headers=("parameter", "best", "default recipe", "importance"),
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
    ]
    if figure:
        lines += [f"![optimisation history of {result.name}]({result.stem}.png)", ""]
    return "\n".join(lines)


def draw_history(result: SearchResult) -> Figure:
    """Each trial's value by trial number (pruned: the last epoch reported), the best so far,
    and the default recipe's validation top-1 for reference."""
    values = result.values()
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    complete = values[values["state"] == "COMPLETE"]
    pruned = values[values["state"] == "PRUNED"]
    ax.scatter(complete["number"], complete["value"], color=OURS_COLOR, label="complete")
    ax.scatter(pruned["number"], pruned["value"], color=PAPER_COLOR, marker="x", label="pruned")
    if len(complete):
        best = complete.set_index("number")["value"].cummax()
        ax.step(best.index, best.to_numpy(), where="post", color=OURS_COLOR, label="best so far")
    default = (result.default or {}).get(f"metrics.final/{result.protocol}/val_top1")
    if _number(default) is not None:
        ax.axhline(float(default), color="0.5", linestyle="--", label="default recipe")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{result.metric} (%)")
    ax.set_title(f"{result.name}: optimisation history")
    ax.legend(loc="best", fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    return fig


def write_search(results: Iterable[SearchResult], out: Path, formats: Iterable[str]) -> list[Path]:
    """`search_<name>.md|csv|png` of the newest search of each name; returns the files."""
    formats, written, seen = set(formats), [], set()
    out.mkdir(parents=True, exist_ok=True)
    for result in results:
        if result.name in seen:
            continue
        seen.add(result.name)
        stem = out / result.stem
        if "md" in formats:
            written.append(stem.with_suffix(".md"))
            written[-1].write_text(to_markdown(result, "#", figure="png" in formats))
        if "csv" in formats:
            written.append(stem.with_suffix(".csv"))
            result.values().to_csv(written[-1], index=False)
        if "png" in formats:
            with style.context(SEABORN_STYLE):
                draw_history(result).savefig(stem.with_suffix(".png"), dpi=150)
            written.append(stem.with_suffix(".png"))
    return written
