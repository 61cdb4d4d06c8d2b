"""The supervised reference row: the same ViT classifier trained from random initialisation.

Table 11's recipe (AdamW β = (0.9, 0.95), wd 0.3, no layer decay, long warmup) in `cfg.scratch`,
scaled by the scale files; the official EMA of the weights is not used. No pre-training
checkpoint is read: the argument exists so every protocol has one signature.
"""

from __future__ import annotations

import logging
from functools import partial as bind
from pathlib import Path

from mae.config import ExperimentConfig
from mae.evaluate.finetune import finetune_setup
from mae.evaluate.loop import run_protocol
from mae.logger import MetricLogger

log = logging.getLogger(__name__)


def scratch(
    cfg: ExperimentConfig,
    pretrain_checkpoint: Path | None,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Train the classifier from timm's random init with `cfg.scratch`; test-split top-1/top-5."""
    if pretrain_checkpoint is not None:
        log.info("scratch ignores the pre-training checkpoint %s", pretrain_checkpoint)
    build = bind(finetune_setup, "scratch", cfg, None)
    return run_protocol("scratch", cfg, workdir, build, logger, stop_after_epoch)
