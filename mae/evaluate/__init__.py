"""Evaluation protocols of a pre-trained encoder: (checkpoint, eval config) -> test metrics.

`run_eval(stage, ...)` dispatches to `finetune`, `linprobe`, `partial` or `scratch`; each keeps
its own `workdir/checkpoint.pt` and resumes exactly.
"""

from __future__ import annotations

from pathlib import Path

from mae.config import ExperimentConfig
from mae.evaluate.finetune import finetune
from mae.evaluate.linprobe import linprobe
from mae.evaluate.partial import partial
from mae.evaluate.scratch import scratch
from mae.logger import MetricLogger

PROTOCOLS = {"finetune": finetune, "linprobe": linprobe, "partial": partial, "scratch": scratch}


def run_eval(
    stage: str,
    cfg: ExperimentConfig,
    pretrain_checkpoint: Path | None,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Run evaluation `stage` of the encoder in `pretrain_checkpoint` (None: random init)."""
    if stage not in PROTOCOLS:
        raise ValueError(f"unknown evaluation stage {stage!r}; allowed: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[stage](cfg, pretrain_checkpoint, Path(workdir), logger, stop_after_epoch)


__all__ = ["PROTOCOLS", "finetune", "linprobe", "partial", "run_eval", "scratch"]
