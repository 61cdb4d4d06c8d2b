"""The search report: built from MLflow rows alone (the search's run, its trials' runs, the two
evaluation runs it names), as Markdown, CSV and the optimisation history PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mae.report import cli
from mae.report.search import search_results, to_markdown, write_search

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def frame() -> pd.DataFrame:
    search = {
        "run_id": "s1",
        "status": "FINISHED",
        "start_time": T0,
        "tags.stage": "search",
        "tags.search": "ft",
        "tags.protocol": "finetune",
        "tags.optuna_study": "ft/micro/abc",
        "tags.optuna_storage": "sqlite:////x/optuna.db",
        "tags.best_trial": "2",
        "tags.best.blr": "0.003",
        "tags.best.epochs": "10",
        "tags.best_eval_run": "e1",
        "tags.default_eval_run": "e2",
        "params.search.metric": "finetune/val_top1",
        "params.search.space.blr": "log-uniform [0.001, 0.02]",
        "params.search.space.epochs": "one of 5, 10",
        "metrics.importance/blr": 0.8,
        "metrics.importance/epochs": 0.2,
    }
    trials = [
        {
            "run_id": f"t{n}",
            "status": status,
            "start_time": T0 + pd.Timedelta(seconds=n),
            "tags.stage": "trial",
            "tags.mlflow.parentRunId": "s1",
            "tags.trial_number": str(n),
            "tags.trial_state": state,
            "metrics.final/finetune/val_top1": value,
        }
        for n, (status, state, value) in enumerate(
            [
                ("FINISHED", "COMPLETE", 70.0),
                ("KILLED", "PRUNED", 40.0),
                ("FINISHED", "COMPLETE", 80.0),
            ]
        )
    ]
    evals = [
        {
            "run_id": run_id,
            "status": "FINISHED",
            "start_time": T0,
            "tags.stage": "finetune",
            "params.finetune.blr": blr,
            "params.finetune.epochs": "15",
            "metrics.final/finetune/top1": test,
            "metrics.final/finetune/val_top1": val,
        }
        for run_id, blr, test, val in (("e1", "0.003", 79.5, 80.0), ("e2", "0.004", 75.0, 74.0))
    ]
    return pd.DataFrame([search, *trials, *evals])


def test_search_report_compares_the_best_parameters_with_the_default_recipe(
    tmp_path: Path,
) -> None:
    (result,) = search_results(frame())
    assert result.name == "ft" and result.states == {"COMPLETE": 2, "PRUNED": 1}
    assert result.params() == [("blr", "0.003", "0.004", 0.8), ("epochs", "10", "15", 0.2)]
    text = " ".join(to_markdown(result).split())
    assert "trials: 2 COMPLETE, 1 PRUNED" in text and "best trial #2" in text
    assert "| best parameters | 80 | 79.5 |" in text
    assert "| default recipe | 74 | 75 |" in text
    assert "| blr | 0.003 | 0.004 | 0.8 |" in text
    assert "beat the default recipe on validation by +6.00 points" in text
    assert "from the 2 complete trials" in text
    files = write_search([result], tmp_path, ["md", "csv", "png"])
    assert [f.name for f in files] == ["search_ft.md", "search_ft.csv", "search_ft.png"]
    assert pd.read_csv(tmp_path / "search_ft.csv")["state"].tolist() == [
        "COMPLETE",
        "PRUNED",
        "COMPLETE",
    ]


def test_search_that_found_nothing_better_says_keep_the_default() -> None:
    rows = frame()
    rows.loc[rows["run_id"] == "e2", "metrics.final/finetune/val_top1"] = 86.0
    (result,) = search_results(rows)
    text = " ".join(to_markdown(result).split())
    assert "nothing better than the default recipe on validation (80.00 against 86.00)" in text
    rows = rows[rows["run_id"] != "e2"]
    (result,) = search_results(rows)
    assert "Verdict: missing" in to_markdown(result)


def test_make_tables_only_search_on_a_store_without_searches(
    tracking_uri: str, tmp_path: Path, capsys
) -> None:
    from mae import track

    track.init_store(tracking_uri, "micro")
    argv = ["--scale", "micro", "--only", "search", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    assert "no search at scale micro" in capsys.readouterr().out
    assert cli.main(["--scale", "micro", "--only", "search,nope"]) == 2
    assert "table1a" in capsys.readouterr().err
