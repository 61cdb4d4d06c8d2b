"""`studies/run.py`: bad input is one line naming the file, the dotted key and what is allowed,
exit code 2, nothing launched and no tracking store created; good input plans and reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mae import track
from mae.paths import project_root
from mae.sweep import cli
from mae.sweep.launch import LaunchReport

# (file name, YAML text, dotted key in the error, text of what is allowed)
MALFORMED = [
    ("unknown_top_key", "sweeps: {masking.ratio: [0.5]}\n", "sweeps", "allowed keys: name"),
    (
        "unknown_config_key",
        "sweep: {masking.rate: [0.5, 0.75]}\n",
        "sweep.masking.rate",
        "allowed keys here: ratio, sampler",
    ),
    (
        "unknown_section",
        "overrides: {decodr.width: 512}\n",
        "overrides.decodr.width",
        "allowed keys here: data, decoder",
    ),
    (
        "ratio_out_of_range",
        "sweep: {masking.ratio: [0.5, 0.75, 1.5]}\n",
        "sweep.masking.ratio[2]",
        "lt 1.0",
    ),
    ("empty_sweep", "sweep: {}\n", "sweep", "at least one axis"),
    ("empty_axis", "sweep: {masking.ratio: []}\n", "sweep.masking.ratio", "non-empty list"),
    ("scalar_axis", "sweep: {masking.ratio: 0.5}\n", "sweep.masking.ratio", "non-empty list"),
    ("wrong_type_seeds", "seeds: zero\n", "seeds", "list of distinct non-negative integers"),
    ("negative_seed", "seeds: [0, -1]\n", "seeds[1]", "non-negative"),
    (
        "wrong_type_value",
        "overrides: {pretrain.epochs: many}\n",
        "overrides.pretrain.epochs",
        "valid integer",
    ),
    ("unknown_scale", "scale: huge\n", "scale", "micro | paper | small | tiny"),
    (
        "unknown_evaluation",
        "evaluations: [finetune, knn]\n",
        "evaluations[1]",
        "finetune | linprobe | partial | scratch",
    ),
    (
        "duplicate_evaluation",
        "evaluations: [finetune, finetune]\n",
        "evaluations[1]",
        "each stage once",
    ),
    (
        "duplicate_cases",
        "cases:\n  - {masking.ratio: 0.5}\n  - {masking: {ratio: 0.5}}\n",
        "cases[1]",
        "repeats [0]",
    ),
    (
        "duplicate_by_scale_map",  # 48 is what tiny maps the paper's 512 to
        "cases:\n  - {decoder.width: 512}\n  - {decoder.width: 48}\n",
        "cases[1].decoder.width",
        "plans the same runs as cases[0].decoder.width",
    ),
    (
        "axis_that_changes_nothing",
        "sweep: {finetune.epochs: [5, 10]}\nevaluations: [linprobe]\n",
        "sweep.finetune.epochs[1]",
        "a key no planned stage uses",
    ),
    (
        "duplicate_axis_value",
        "sweep: {masking.ratio: [0.5, 0.5]}\n",
        "sweep.masking.ratio[1]",
        "repeats [0]",
    ),
    ("bad_yaml", "sweep: {masking.ratio: [0.5, 0.75}\n", "line 2", "YAML syntax error"),
    ("not_a_mapping", "- masking.ratio\n", "<root>", "a study file is a mapping"),
    (
        "grid_needs_075",
        "cases:\n  - {masking.sampler: grid, masking.ratio: 0.5}\n",
        "cases[0].masking.ratio",
        "ratio must be 0.75",
    ),
    (
        "unknown_sampler",
        "sweep: {masking.sampler: [random, diagonal]}\n",
        "sweep.masking.sampler[1]",
        "random | block | grid",
    ),
    (
        "bad_partial_k",
        "evaluations: [{partial: {blocks: [1, 1.5]}}]\n",
        "evaluations[0].partial.blocks[1]",
        "whole number or 0.5",
    ),
    (
        "unknown_partial_key",
        "evaluations: [{partial: {blockz: [1]}}]\n",
        "evaluations[0].partial.blockz",
        "allowed keys here",
    ),
    (
        "case_resweeps_axis",
        "sweep: {masking.ratio: [0.5]}\ncases:\n  - {masking.ratio: 0.75}\n",
        "cases[0].masking.ratio",
        "swept by sweep.masking.ratio",
    ),
    ("bad_name", "name: my study\n", "name", "letters, digits"),
    (
        "patch_does_not_divide",
        "sweep: {encoder.patch_size: [4, 3]}\n",
        "sweep.encoder.patch_size[1]",
        "not divisible by encoder.patch_size 3",
    ),
    (
        "dataset_without_root",
        "overrides: {data.dataset: imagefolder}\n",
        "overrides.data.dataset",
        "pass --set data.root=/path",
    ),
]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder for the default tracking store; launching is forbidden."""
    folder = tmp_path / "store"
    folder.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")

    def no_launch(*args: object, **kwargs: object) -> None:
        raise AssertionError("launched on bad input")

    monkeypatch.setattr("mae.sweep.launch.launch", no_launch)
    return folder


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


@pytest.mark.parametrize(
    ("stem", "text", "key", "allowed"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_study_is_one_line_exit_2_and_no_store(
    stem: str,
    text: str,
    key: str,
    allowed: str,
    tmp_path: Path,
    store: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(text if text.startswith(("name", "-")) else f"name: {stem}\n{text}")
    assert cli.main([str(path), "--scale", "tiny"] if stem != "unknown_scale" else [str(path)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {path}: {key}: got "), line
    assert allowed in line, line
    assert list(store.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "source", "key", "allowed"),
    [
        (["mask_ratio_sweep", "--cluster", "nope"], "--cluster", "cluster", "local, debug, dev"),
        (["mask_ratio_sweep", "--scale", "huge"], "--scale", "scale", "micro | paper | small"),
        (["mask_ratio_sweep", "--set", "masking.ratio=0.5"], "--set", "masking.ratio", "swept"),
        (["decoder_depth", "--set", "masking.ratio=1.5"], "--set", "masking.ratio", "lt 1.0"),
        (["decoder_depth", "--set", "masking.ratio"], "--set", "masking.ratio", "KEY=VALUE"),
        (["decoder_depth", "--seeds", "0,x"], "--seeds", "seeds", "comma-separated"),
        (["no_such_study"], "no_such_study", "<study>", "available: data_augmentation"),
        (
            ["decoder_depth", "--scale", "paper"],
            "studies/scales/paper.yaml",
            "config.data.root",
            "pass --set data.root",
        ),
    ],
)
def test_bad_command_line_is_one_line_exit_2(
    argv: list[str],
    source: str,
    key: str,
    allowed: str,
    store: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(argv) == 2
    line = error_line(capsys)
    assert f"{source}: {key}: got " in line and allowed in line, line
    assert list(store.iterdir()) == []


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
    experiment = track.init_store(tracking_uri, "micro")
    run_id = track.open_run(
        tracking_uri,
        experiment,
        key=run.key,
        stage="pretrain",
        run_name=run.name,
        params={},
        tags={"study": "someone_else"},
    )
    track.finish_run(tracking_uri, run_id)
    assert cli.main(["wallclock", "--scale", "micro", "--dry-run"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(run.name))
    assert run.key[:12] in row and "finished" in row and "someone_else" in row


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
    assert len(call["plan"].runs) == 24 and call["plan"].experiment_id == call["experiment_id"]
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
