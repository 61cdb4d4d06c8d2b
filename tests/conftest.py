"""Shared test setup: one CPU thread, no progress bars, a throw-away MLflow store and runs folder,
the micro config every test builds on, the `slurm` marker (skip with a hint when no cluster
answers, fail when CI requires one) and the lab's tracking set-up (PostgreSQL + mlflow server,
started by slurm/tracking-server/start.sh; skipped with a hint, or failed when CI requires it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before torch is imported anywhere, and inherited by the job processes tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("CI", "1")  # mae.train.runtime: progress bars off outside an interactive run

import pytest  # noqa: E402
import torch  # noqa: E402

from mae.config import ExperimentConfig, validate_config  # noqa: E402
from mae.overrides import apply_overrides
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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for `make test`'s two workers (`--dist loadgroup`): a module's tests run on one
    worker, in order, so its module and session fixtures are built once; every Slurm test is in
    one group, since the one-node dev cluster runs one test's jobs at a time. The Slurm group goes
    first: it is the longest (~15 min on CI), and the other worker does the rest meanwhile."""
    for item in items:
        slurm = item.get_closest_marker("slurm") is not None
        item.add_marker(pytest.mark.xdist_group("slurm" if slurm else item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)  # stable: order kept


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


# --------------------------------------------------------------------------- the lab's tracking

TRACKING_SCRIPTS = Path(__file__).resolve().parents[1] / "slurm" / "tracking-server"
# Either variable makes a tracking set-up that cannot start fail the tests instead of skipping
# them: .ci/run sets both.
REQUIRE_TRACKING = ("MAE_REQUIRE_POSTGRES", "MAE_REQUIRE_SLURM")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class TrackingLab:
    """What slurm/tracking-server/start.sh started: the server's URI, the PostgreSQL it stores in
    (`database(name)` is a SQLAlchemy URL with the password, for direct checks) and its state."""

    state: Path
    uri: str
    postgres: str  # postgresql://mae:<password>@127.0.0.1:<port>

    @property
    def backend(self) -> str:
        return self.database("mlflow")

    def database(self, name: str) -> str:
        return f"{self.postgres}/{name}"


def read_lab(state: Path) -> TrackingLab:
    """The set-up described by `state/env.sh` (written by start.sh)."""
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in (state / "env.sh").read_text().splitlines()
        if line.startswith("export ")
    )
    password = (state / "db-password").read_text().strip()
    port = exports["MAE_POSTGRES"].rsplit(":", 1)[1]
    postgres = f"postgresql://mae:{password}@127.0.0.1:{port}"
    return TrackingLab(state, exports.get("MLFLOW_TRACKING_URI", ""), postgres)


def tracking_unavailable(why: str) -> None:
    message = f"no tracking set-up ({why}); slurm/tracking-server/start.sh starts one"
    if any(os.environ.get(name) == "1" for name in REQUIRE_TRACKING):
        pytest.fail(f"{'/'.join(REQUIRE_TRACKING)}=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tracking_lab() -> Iterator[TrackingLab]:
    """The one .ci/run started (MAE_TRACKING_STATE), else one started here by the same script in
    a temporary state folder on free ports, and stopped (its data removed) at the end."""
    given = os.environ.get("MAE_TRACKING_STATE")
    if given and (Path(given) / "env.sh").exists():
        lab = read_lab(Path(given))
        if answers(lab.uri):
            yield lab
            return
    state = Path(tempfile.mkdtemp(prefix="mae-pg-", dir="/tmp"))  # short: a unix socket lives here
    env = {
        **os.environ,
        "MAE_TRACKING_STATE": str(state),
        "PG_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "MLFLOW_WORKERS": "2",
        "PYTHON": sys.executable,
        "WAIT_S": "600",  # a loaded 2-core machine imports mlflow slowly
    }
    started = subprocess.run(
        [str(TRACKING_SCRIPTS / "start.sh")], env=env, capture_output=True, text=True, timeout=1800
    )
    try:
        if started.returncode != 0:
            tracking_unavailable(f"start.sh failed: {(started.stdout + started.stderr)[-1500:]}")
        yield read_lab(state)
    finally:
        subprocess.run(
            [str(TRACKING_SCRIPTS / "stop.sh")], env=env, capture_output=True, timeout=120
        )
        shutil.rmtree(state, ignore_errors=True)
