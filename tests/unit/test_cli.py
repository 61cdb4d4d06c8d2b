"""`studies/run.py`: dry runs and real runs report what they plan and did (bad input, one line and
exit code 2 with nothing written, is the corpus of tests/unit/test_bad_inputs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import tracked_run

from mae import track
from mae.paths import project_root
from mae.sweep import cli
from mae.sweep.launch import LaunchReport


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder for the default tracking store; launching is forbidden (dry runs)."""
    folder = tmp_path / "store"
    folder.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")

    def no_launch(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run launched")

    monkeypatch.setattr("mae.sweep.launch.launch", no_launch)
    return folder


def test_dry_run_prints_the_plan_and_creates_nothing(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["decoder_depth", "--scale", "micro", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "decoder_depth/depth=8/seed0/pretrain" in out
    assert "unavailable: decoder.depth=2 has no counterpart at scale micro" in out
    baseline = next(ln for ln in out.splitlines() if ln.startswith("decoder_depth/depth=8/seed0/p"))
    assert "decoder_width" in baseline  # the baseline is shared with other studies
    assert "local: 9 jobs (pretrain: 3, finetune: 3, linprobe: 3)" in out
    assert list(store.iterdir()) == []


def test_dry_run_on_a_slurm_profile_prints_sbatch_parameters(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["mask_ratio_sweep", "--scale", "micro", "--cluster", "dev", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --partition=debug" in out
    assert "#SBATCH --array=0-9" in out
    assert "#SBATCH --job-name=mae-pretrain" in out and "#SBATCH --job-name=mae-linprobe" in out
    assert "--dependency='afterok:" in out
    assert list(store.iterdir()) == []


def test_dry_run_shows_statuses_from_the_store(
    tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mae.sweep.plan import plan_study
    from mae.sweep.scale import load_scale
    from mae.sweep.spec import load_study

    plan = plan_study(load_study("wallclock"), load_scale("micro"))
    run = next(r for r in plan.runs if r.stage == "pretrain")
    tracked_run(
        tracking_uri, track.init_store(tracking_uri, "micro"), run, tags={"study": "someone_else"}
    )
    assert cli.main(["wallclock", "--scale", "micro", "--dry-run"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(run.name))
    assert run.key[:12] in row and "finished" in row and "someone_else" in row


def test_a_dry_run_reads_a_sql_store_without_importing_mlflow(tracking_uri: str) -> None:
    """Planning reads a database store with SQL alone: importing MLflow (about 4 s) and pandas
    would be most of the time of planning a 1,000-run study (docs/benchmarks.md)."""
    from mae.sweep.plan import plan_study
    from mae.sweep.scale import load_scale
    from mae.sweep.spec import load_study

    plan = plan_study(load_study("mask_ratio_sweep"), load_scale("micro"))
    assert len(plan.runs) > track.KEYS_PER_QUERY_LIMIT  # the one-read path, not a query per key
    run = plan.runs[3]
    tracked_run(tracking_uri, track.init_store(tracking_uri, "micro"), run)
    code = (
        "import sys; from mae.sweep import cli; "
        "code = cli.main(['mask_ratio_sweep', '--scale', 'micro', '--dry-run', "
        f"'--tracking-uri', {tracking_uri!r}]); "
        "print('imported', [m for m in ('mlflow', 'pandas') if m in sys.modules], code)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    ).stdout
    assert out.splitlines()[-1] == "imported [] 0"
    row = next(line for line in out.splitlines() if line.startswith(run.name))
    assert run.key[:12] in row and "finished" in row
    assert "30 runs (1 finished, 29 new)" in out


def fake_launch(report: LaunchReport, calls: list[dict]):
    def launch(plan, **kwargs):
        calls.append({"plan": plan, **kwargs})
        return report

    return launch


def test_run_creates_the_store_then_launches_and_exits_0(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict] = []
    report = LaunchReport(launched=["a"], finished=["a"])
    monkeypatch.setattr("mae.sweep.launch.launch", fake_launch(report, calls))
    argv = [
        "demo",
        "--scale",
        "micro",
        "--max-parallel",
        "2",
        "--seeds",
        "0,1",
        "--cluster",
        "debug",
    ]
    assert cli.main(argv) == 0
    (call,) = calls
    assert call["cluster"] == "debug" and call["max_parallel"] == 2
    assert call["tracking_uri"] == tracking_uri
    assert call["experiment_id"] == track.find_experiment(tracking_uri, "micro")
    assert len(call["plan"].runs) == 8  # 2 ratios x 2 seeds x (pre-training, probe)
    assert call["plan"].experiment_id == call["experiment_id"]
    out = capsys.readouterr().out
    assert "make ui" in out and "mae-ablate/micro" in out
    assert "python analysis/make_tables.py --scale micro" in out


def test_failed_runs_are_listed_and_exit_1(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = LaunchReport(launched=["x/pretrain"], failed=[("x/pretrain", "RuntimeError: boom")])
    monkeypatch.setattr("mae.sweep.launch.launch", fake_launch(report, []))
    assert cli.main(["scratch_baseline", "--scale", "micro"]) == 1
    assert "FAILED x/pretrain: RuntimeError: boom" in capsys.readouterr().out


def test_studies_run_py_runs_from_anywhere(tmp_path: Path) -> None:
    script = project_root() / "studies" / "run.py"
    out = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "--dry-run" in out.stdout and "--retry-failed" in out.stdout


@pytest.mark.parametrize(
    ("study", "section", "key"),
    [
        ("scratch_baseline", "data", "data.dataset: got 'cifar10'"),
        ("transfer_classification", "linprobe", "linprobe.dataset: got 'cifar10'"),
    ],
)
def test_a_data_set_not_on_disk_is_bad_input_and_nothing_starts(
    tracking_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    study: str,
    section: str,
    key: str,
) -> None:
    runs = tmp_path / "runs"
    argv = [study, "--scale", "micro", "--runs-dir", str(runs)]
    argv += ["--set", f"{section}.dataset=cifar10", "--set", f"{section}.root={tmp_path}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert key in err and f"CIFAR-10 not found at {tmp_path}" in err
    assert track.runs_frame(tracking_uri, "micro").empty
    assert not runs.exists()
