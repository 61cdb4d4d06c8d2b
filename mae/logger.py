"""The small logging interface that training and evaluation report through.

`mae.train` and `mae.evaluate` know nothing of MLflow: they call a `MetricLogger`, and `mae.jobs`
passes one backed by `mae.track`. Tests pass a `RecordingLogger`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class MetricLogger(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Per-epoch numbers, `step` = epoch (1-based, the epoch just completed)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file produced by the run (a PNG, a JSON summary)."""


class NullLogger:
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass


@dataclass
class RecordingLogger:
    """Keeps everything in memory: for tests and for in-process inspection."""

    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def series(self, name: str) -> list[float]:
        return [m[name] for _, m in self.metrics if name in m]
