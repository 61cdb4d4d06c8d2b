"""Where the project's default stores live: one place, so every room agrees."""

from __future__ import annotations

import os
from pathlib import Path


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
