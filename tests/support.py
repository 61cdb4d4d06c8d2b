"""Helpers that several test modules share (the directory of conftest.py is on sys.path)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mae.model import MaskedAutoencoder


@dataclass
class RecordingLogger:
    """A `mae.logger.MetricLogger` that keeps everything in memory."""

    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def series(self, name: str) -> list[float]:
        return [m[name] for _, m in self.metrics if name in m]


def mae_features(model: MaskedAutoencoder, images: torch.Tensor, pool: str) -> torch.Tensor:
    """The MAE encoder on whole images (no masking), pooled as the class token ('cls') or the
    mean patch token ('avg'): the reference a timm classifier carrying the encoder must match."""
    x = model.encode(model.patch_embed(images) + model.pos_embed[:, 1:])
    return x[:, 0] if pool == "cls" else x[:, 1:].mean(dim=1)
