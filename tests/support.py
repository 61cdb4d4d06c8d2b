"""Helpers that several test modules share (the directory of conftest.py is on sys.path)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mae import track
from mae.model import MaskedAutoencoder

if TYPE_CHECKING:
    from mae.sweep.plan import PlannedRun

# A micro search for the local and Slurm tests: a linear probe, whose epochs take a second at
# micro and whose accuracy moves with the learning rate (more so at batch 32: more steps per
# epoch), so that the median pruner, from the second trial on, has trials to stop.
MICRO_SEARCH = """
name: micro_search
kind: search
scale: micro
protocol: linprobe
pretraining: {pretrain.epochs: 100}   # 2 epochs at micro
overrides: {linprobe.batch_size: 32}
space:
  blr: {low: 0.01, high: 100.0, log: true}
  weight_decay: {low: 0.0, high: 0.001}
  epochs: {choices: [4, 5]}
sampler: {kind: tpe, seed: 0, n_startup_trials: 4}
pruner: {kind: median, n_startup_trials: 1, n_warmup_steps: 0}
n_trials: 8
workers: 2
heartbeat: {interval: 1, grace: 2, max_retry: 3}
"""


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


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def tracked_run(
    uri: str,
    experiment_id: str,
    run: PlannedRun,
    status: str | None = "FINISHED",
    tags: Mapping[str, str] | None = None,
) -> str:
    """A planned run as a job leaves it in the store: opened under its key, then ended with
    `status` (None: left RUNNING, as an interrupted job); returns its run id."""
    run_id = track.open_run(
        uri,
        experiment_id,
        key=run.key,
        stage=run.stage,
        run_name=run.name,
        params={},
        tags=dict(tags or {}),
    )
    if status:
        track.finish_run(uri, run_id, status)
    return run_id
