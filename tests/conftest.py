"""Shared test setup: one CPU thread, no progress bars, a throw-away MLflow store and runs folder,
the micro config every test builds on, and the `slurm` marker (skip with a hint when no cluster
answers, fail when CI requires one)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Before torch is imported anywhere, and inherited by the job processes tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("CI", "1")  # mae.train.runtime: progress bars off outside an interactive run

import pytest  # noqa: E402
import torch  # noqa: E402

from mae.config import ExperimentConfig, apply_overrides, validate_config  # noqa: E402
from mae.sweep.scale import load_scale  # noqa: E402

torch.set_num_threads(1)

SLURM_HINT = (
    "start it with `slurm/dev-cluster/start.sh` (as root) and "
    "`export SLURM_CONF=$PWD/slurm/dev-cluster/state/etc/slurm.conf` "
    "(= `source slurm/dev-cluster/state/env.sh`)"
)
_SLURM_STATUS = pytest.StashKey[str | None]()


def slurm_problem() -> str | None:
    """None when a Slurm controller answers `sinfo`, else why not."""
    if shutil.which("sinfo") is None:
        return "no `sinfo` on PATH"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return "`sinfo` timed out"
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return f"`sinfo` failed: {lines[-1] if lines else f'exit code {out.returncode}'}"
    if not out.stdout.strip():
        return "`sinfo` lists no nodes"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm") is None:
        return
    stash = item.config.stash
    if _SLURM_STATUS not in stash:
        stash[_SLURM_STATUS] = slurm_problem()
    problem = stash[_SLURM_STATUS]
    if problem is None:
        return
    message = f"no Slurm cluster answers ({problem}); {SLURM_HINT}"
    if os.environ.get("MAE_REQUIRE_SLURM") == "1":
        pytest.fail(f"MAE_REQUIRE_SLURM=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store (artifacts beside it), also set as MLFLOW_TRACKING_URI so that
    code under test which resolves the default store never touches the project's."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh runs folder (checkpoints, pictures, local job logs), also set as MAE_RUNS_DIR."""
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv("MAE_RUNS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def micro() -> Callable[..., ExperimentConfig]:
    """The micro scale's config (digits 8x8, the 48-d 2-block ViT, one thread) under layers of
    overrides, later wins: `micro(RECIPE, **{"pretrain.epochs": 3})`. Keys are dotted or nested."""
    base = load_scale("micro").config

    def make(*layers: Mapping[str, Any], **overrides: Any) -> ExperimentConfig:
        tree = base
        for layer in (*layers, overrides):
            tree = apply_overrides(tree, layer)
        return validate_config(tree, source="micro")

    return make
