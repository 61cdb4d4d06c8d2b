"""Search files: the shipped one loads and dry-runs; a bad search space or setting is one line
naming the file, the dotted key and what is allowed, exit code 2, and nothing written: no MLflow
store, no Optuna storage, no runs folder, no submitit folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mae.sweep import cli
from mae.sweep.search_spec import load_search
from mae.sweep.spec import available_studies

GOOD = """\
name: {stem}
kind: search
scale: micro
protocol: finetune
space:
  blr: {{low: 1.0e-4, high: 1.0e-2, log: true}}
  layer_decay: {{low: 0.5, high: 0.9}}
  epochs: {{choices: [3, 4]}}
n_trials: 4
"""

# (name, (text in GOOD, replacement) or a list of them, dotted key in the error, what is allowed)
BAD = [
    (
        "low_above_high",
        ("low: 0.5, high: 0.9", "low: 0.9, high: 0.5"),
        "space.layer_decay",
        "low must not exceed high",
    ),
    (
        "log_low_zero",
        ("low: 1.0e-4, high: 1.0e-2, log", "low: 0.0, high: 1.0e-2, log"),
        "space.blr.low",
        "a log range needs low > 0",
    ),
    (
        "log_low_negative",
        ("low: 1.0e-4, high: 1.0e-2, log", "low: -1, high: 1.0e-2, log"),
        "space.blr.low",
        "a log range needs low > 0",
    ),
    (
        "unknown_parameter",
        ("layer_decay:", "layer_decy:"),
        "space.layer_decy",
        "unknown parameter of finetune; allowed: augmentation, batch_size, betas, blr",
    ),
    ("seed_is_not_searched", ("layer_decay:", "seed:"), "space.seed", "unknown parameter"),
    (
        "unknown_sampler",
        ("n_trials: 4", "n_trials: 4\nsampler: {kind: cmaes}"),
        "sampler.kind",
        "tpe | random | grid",
    ),
    (
        "unknown_pruner",
        ("n_trials: 4", "n_trials: 4\npruner: {kind: patient}"),
        "pruner.kind",
        "median | hyperband | none",
    ),
    ("zero_trials", ("n_trials: 4", "n_trials: 0"), "n_trials", "greater than or equal to 1"),
    ("no_trials", ("n_trials: 4\n", ""), "n_trials", "Field required"),
    (
        "empty_space",
        (
            "space:\n  blr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
            "  layer_decay: {low: 0.5, high: 0.9}\n  epochs: {choices: [3, 4]}\n",
            "space: {}\n",
        ),
        "space",
        "at least one parameter",
    ),
    (
        "bound_outside_config",
        ("low: 0.5, high: 0.9", "low: 0.5, high: 1.5"),
        "space.layer_decay.high",
        "le 1",
    ),
    (
        "choice_outside_config",
        ("choices: [3, 4]", "choices: [3, 0]"),
        "space.epochs.choices[1]",
        "ge 1",
    ),
    (
        "float_bound_on_int_field",
        ("epochs: {choices: [3, 4]}", "epochs: {low: 2.5, high: 4}"),
        "space.epochs.low",
        "an integer",
    ),
    (
        "range_on_text_field",
        ("epochs: {choices: [3, 4]}", "randaug: {low: 1, high: 2}"),
        "space.randaug",
        "this field takes {choices: []}",
    ),
    (
        "duplicate_choices",
        ("choices: [3, 4]", "choices: [3, 3]"),
        "space.epochs.choices",
        "values must differ",
    ),
    ("zero_workers", ("n_trials: 4", "n_trials: 4\nworkers: 0"), "workers", "greater than"),
    (
        "grid_needs_steps",
        ("n_trials: 4", "n_trials: 4\nsampler: {kind: grid}"),
        "space.blr",
        "the grid sampler needs {choices: [...]} or a range with a step",
    ),
    (
        "grid_too_small",  # epochs alone: 2 points for 4 trials
        [
            ("n_trials: 4", "n_trials: 4\nsampler: {kind: grid}"),
            ("  blr: {low: 1.0e-4, high: 1.0e-2, log: true}\n", ""),
            ("  layer_decay: {low: 0.5, high: 0.9}\n", ""),
        ],
        "n_trials",
        "at most the grid's 2 points",
    ),
    (
        "unknown_protocol",
        ("protocol: finetune", "protocol: knn"),
        "protocol",
        "finetune | linprobe | partial",
    ),
    (
        "scratch_is_not_searched",
        ("protocol: finetune", "protocol: scratch"),
        "protocol",
        "finetune | linprobe | partial",
    ),
    (
        "bad_storage",
        ("n_trials: 4", "n_trials: 4\nstorage: redis://host/0"),
        "storage",
        "journal, journal:PATH, or a database URL",
    ),
    (
        "eval_key_as_pretraining",
        ("n_trials: 4", "n_trials: 4\npretraining: {finetune.blr: 1}"),
        "pretraining.finetune.blr",
        "a pre-training key",
    ),
    (
        "pretraining_label_out_of_range",
        ("n_trials: 4", "n_trials: 4\npretraining: {masking.ratio: 1.5}"),
        "pretraining.masking.ratio",
        "lt 1.0",
    ),
    (
        "pretrain_key_as_override",
        ("n_trials: 4", "n_trials: 4\noverrides: {masking.ratio: 0.5}"),
        "overrides.masking.ratio",
        "a finetune.* or runtime.* key",
    ),
    (
        "override_of_searched_key",
        ("n_trials: 4", "n_trials: 4\noverrides: {finetune.blr: 0.001}"),
        "overrides.finetune.blr",
        "searched by space.blr",
    ),
    (
        "hyperband_longer_than_trials",
        ("n_trials: 4", "n_trials: 4\npruner: {kind: hyperband, min_resource: 9}"),
        "pruner.min_resource",
        "at most the longest trial's 4 epochs",
    ),
    (
        "minimize_accuracy",
        ("n_trials: 4", "n_trials: 4\ndirection: minimize"),
        "direction",
        "val_top1 is an accuracy: maximize",
    ),
    ("test_metric", ("n_trials: 4", "n_trials: 4\nmetric: top1"), "metric", "val_top1 | val_top5"),
    (
        "unknown_key",
        ("n_trials: 4", "n_trials: 4\ntrials: 4"),
        "trials",
        "allowed keys: name, kind",
    ),
]


@pytest.fixture
def empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default stores' folder and the runs folder of the command, both checked empty after."""
    folder = tmp_path / "store"
    folder.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")
    monkeypatch.setenv("MAE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    return folder


def nothing_written(tmp_path: Path, store: Path) -> None:
    assert list(store.iterdir()) == []
    assert not (tmp_path / "runs").exists()
    assert not list(tmp_path.rglob(".submitit")) and not list(tmp_path.rglob("optuna*"))


@pytest.mark.parametrize(("stem", "edit", "key", "allowed"), BAD, ids=[b[0] for b in BAD])
def test_bad_search_is_one_line_exit_2_and_nothing_written(
    stem, edit, key, allowed, tmp_path, empty, capsys
) -> None:
    text = GOOD.format(stem=stem)
    for old, new in edit if isinstance(edit, list) else [edit]:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"{stem}.yaml"
    path.write_text(text)
    assert cli.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}: {key}: got "), err
    assert allowed in err, err
    nothing_written(tmp_path, empty)


@pytest.mark.parametrize(
    ("argv", "source", "key", "allowed"),
    [
        (["--set", "finetune.blr=0.1"], "--set", "finetune.blr", "searched by space.blr"),
        (["--seeds", "0,1"], "--seeds", "seeds", "a search runs one seed"),
        (["--cluster", "nope"], "--cluster", "cluster", "local, debug, dev"),
        (["--scale", "huge"], "--scale", "scale", "micro | paper | small | tiny"),
        (["--max-parallel", "0"], "--max-parallel", "max_parallel", "at least 1"),
    ],
)
def test_bad_search_command_line_is_one_line_exit_2(
    argv, source, key, allowed, tmp_path, empty, capsys
) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD.format(stem="good"))
    assert cli.main([str(path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{source}: {key}: got " in err and allowed in err, err
    nothing_written(tmp_path, empty)


def test_shipped_search_is_a_search_not_a_study() -> None:
    assert "finetune_search" in available_studies("search")
    assert "finetune_search" not in available_studies()
    spec = load_search("finetune_search")
    assert spec.protocol == "finetune" and spec.n_trials >= 16 and spec.workers == 2
    assert spec.sampler.kind == "tpe" and spec.pruner.kind == "median"
    assert {"blr", "layer_decay", "drop_path", "weight_decay", "mixup", "cutmix"} <= set(spec.space)
    assert spec.space["blr"].log and spec.space["epochs"].choices


def test_dry_run_shows_space_sampler_storage_and_trials_and_writes_nothing(
    tmp_path, empty, capsys
) -> None:
    assert cli.main(["finetune_search", "--scale", "micro", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "optuna study: finetune_search/micro/" in out
    assert f"storage: sqlite:///{empty / 'optuna.db'} (heartbeat every 60 s" in out
    assert "sampler: TPE (seed 0" in out and "pruner: median" in out
    assert "blr           log-uniform [0.001, 0.02]" in out
    assert "trials so far: none (a new study)" in out
    assert "workers: 2 (a local queue, 2 at once)" in out
    nothing_written(tmp_path, empty)


def test_dry_run_on_slurm_shows_one_worker_array(tmp_path, empty, capsys) -> None:
    argv = ["finetune_search", "--scale", "micro", "--cluster", "dev", "--dry-run"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "workers: one Slurm array of 2 task(s), profile 'dev'" in out
    assert "#SBATCH --array=0-1%2" in out and "#SBATCH --job-name=mae-finetune" in out
    nothing_written(tmp_path, empty)
