"""Where things live on disk: the project's default stores and the files of a run's workdir.

One place, so every room agrees (and none needs torch or MLflow to know a file name).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

# Files in a run's working directory.
CHECKPOINT = "checkpoint.pt"  # mae.train.checkpoint: the whole state of a run
RECONSTRUCTION = "reconstruction.png"  # a pre-training's reconstruction grid
PROGRESS = "progress.json"  # the last epoch a job reported, for the launcher's display


def project_root() -> Path:
    """`MAE_PROJECT_DIR`, else the checkout holding this package, else the working directory."""
    if env := os.environ.get("MAE_PROJECT_DIR"):
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout
    return Path.cwd()


def runs_dir() -> Path:
    """Default root of run working directories (checkpoints, pictures): `<project>/runs`."""
    return Path(os.environ.get("MAE_RUNS_DIR", project_root() / "runs"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of `sqlite:///relative.db` or `sqlite:////absolute.db`, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))
