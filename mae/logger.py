"""The small logging interface that training and evaluation report through.

`mae.train` and `mae.evaluate` know nothing of MLflow: they call a `MetricLogger`, and `mae.jobs`
passes one backed by `mae.track`; tests pass one that records.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol


class MetricLogger(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Per-epoch numbers, `step` = epoch (1-based, the epoch just completed)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file produced by the run (a PNG, a JSON summary)."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Facts about the run that are not numbers (e.g. that a checkpoint was recovered)."""


class NullLogger:
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass
