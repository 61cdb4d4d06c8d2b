"""The corpus of malformed inputs in tests/data/bad/ (study files, scales, cluster profiles, --set
values, seeds, tracking URIs, files that are not text): each one is refused by `studies/run.py`
with exit code 2 and exactly the one line its case names, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from mae.paths import project_root
from mae.schema import load_yaml
from mae.sweep import cli

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
CASES = load_yaml(BAD / "cases.yaml")


def test_the_corpus_is_large_and_every_file_is_used() -> None:
    assert len(CASES) >= 30
    used = {Path(arg.replace("{bad}/", "")).name for case in CASES for arg in case["args"]}
    assert {p.name for p in BAD.iterdir() if p.name != "cases.yaml"} <= used


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlruns.db'}")
    monkeypatch.setenv("MAE_RUNS_DIR", str(tmp_path / "runs"))
    args = [arg.replace("{bad}", str(BAD)).replace("{tmp}", str(tmp_path)) for arg in case["args"]]

    code = cli.main(args)

    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    expected = case["line"].replace("{bad}", str(BAD)).replace("{tmp}", str(tmp_path))
    expected = expected.replace("{project}", str(project_root()))
    assert code == 2 and len(lines) == 1, lines
    if expected.endswith("..."):
        assert lines[0].startswith(expected.removesuffix("...")), lines[0]
    else:
        assert lines[0] == expected
    assert [p.name for p in tmp_path.rglob("*")] == ["store"]  # no store, runs or .submitit
