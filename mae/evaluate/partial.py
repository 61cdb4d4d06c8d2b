"""Partial fine-tuning (paper Fig. 9): train only the last k blocks of the encoder.

k = `cfg.partial.blocks`: 0 trains only the head (with the norm before or after pooling), 0.5
the MLP sub-block of the last block (norm2 + mlp: "essentially an MLP head"), k the last k
blocks, and k = depth everything (full fine-tuning, the right end of Fig. 9). Frozen parameters
get requires_grad False and their modules stay in eval mode; the recipe is otherwise
fine-tuning's (paper A.1), with its own `cfg.partial` section; like the paper, the best of several
schedules can be chosen per k, on the validation split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial as bind
from pathlib import Path

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mae.config import ExperimentConfig
from mae.evaluate.finetune import finetune_setup
from mae.evaluate.loop import run_protocol
from mae.logger import MetricLogger, NullLogger

log = logging.getLogger(__name__)


def tuned_modules(model: VisionTransformer, blocks: float) -> list[nn.Module]:
    """The modules partial fine-tuning trains for `blocks` = 0, 0.5, 1, ..., depth."""
    depth = len(model.blocks)
    if blocks > depth:
        raise ValueError(f"partial.blocks = {blocks} exceeds the encoder depth {depth}")
    if blocks == depth:
        return [model]
    head = [model.norm, model.fc_norm, model.head]
    if blocks == 0.5:
        last = model.blocks[-1]
        return [*head, last.norm2, last.mlp, last.ls2, last.drop_path2]
    return [*head, *model.blocks[depth - int(blocks) :]]


def frozen_roots(module: nn.Module, tuned: set[int]) -> list[nn.Module]:
    """The largest sub-modules holding nothing tuned (ids in `tuned`): the ones put in eval mode."""
    if id(module) in tuned:
        return []
    if not any(id(m) in tuned for m in module.modules()):
        return [module]
    return [root for child in module.children() for root in frozen_roots(child, tuned)]


def freeze_all_but_last(model: VisionTransformer, blocks: float) -> Sequence[nn.Module]:
    """Freeze everything outside `tuned_modules`; returns the frozen modules to keep in eval."""
    tuned = tuned_modules(model, blocks)
    model.requires_grad_(False)
    for module in tuned:
        module.requires_grad_(True)
    return frozen_roots(model, {id(m) for module in tuned for m in module.modules()})


class ScheduleLogger:
    """Passes one schedule's metrics on under its own names: `partial/epochs100/val_top1`."""

    def __init__(self, inner: MetricLogger, epochs: int):
        self.inner, self.prefix = inner, f"partial/epochs{epochs}/"

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        renamed = {self.prefix + k.removeprefix("partial/"): v for k, v in metrics.items()}
        self.inner.log_metrics(renamed, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.inner.set_tags(tags)


def partial(
    cfg: ExperimentConfig,
    pretrain_checkpoint: Path | None,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Fine-tune the last `cfg.partial.blocks` blocks; test-split top-1/top-5. With several
    schedules (`partial.epochs` a list) each trains in its own folder and the best final
    validation top-1 chooses whose test numbers are reported (never the test split)."""
    schedules = cfg.partial.schedules
    if len(schedules) == 1:
        return _partial(cfg, pretrain_checkpoint, Path(workdir), logger, stop_after_epoch)
    logger = logger or NullLogger()
    results = {}
    for epochs in schedules:
        one = cfg.model_copy(update={"partial": cfg.partial.model_copy(update={"epochs": epochs})})
        results[epochs] = _partial(
            one,
            pretrain_checkpoint,
            Path(workdir) / f"epochs{epochs}",
            ScheduleLogger(logger, epochs),
            stop_after_epoch,
        )
    best = max(schedules, key=lambda e: results[e]["partial/val_top1"])
    log.info("partial: %d epochs has the best validation top-1 of %s", best, schedules)
    chosen = {**results[best], "partial/best_epochs": float(best)}
    if all("partial/wall_time_s" in r for r in results.values()):
        chosen["partial/wall_time_s"] = sum(r["partial/wall_time_s"] for r in results.values())
    for epochs, result in results.items():
        chosen[f"partial/epochs{epochs}/val_top1"] = result["partial/val_top1"]
    return chosen


def _partial(
    cfg: ExperimentConfig,
    pretrain_checkpoint: Path | None,
    workdir: Path,
    logger: MetricLogger | None,
    stop_after_epoch: int | None,
) -> dict[str, float]:
    freeze = bind(freeze_all_but_last, blocks=cfg.partial.blocks)
    build = bind(finetune_setup, "partial", cfg, pretrain_checkpoint, freeze=freeze)
    return run_protocol("partial", cfg, workdir, build, logger, stop_after_epoch)
