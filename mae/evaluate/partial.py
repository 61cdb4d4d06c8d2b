"""Partial fine-tuning (paper Fig. 9): train only the last k blocks of the encoder.

k = `cfg.partial.blocks`: 0 trains only the head (with the norm before or after pooling), 0.5
the MLP sub-block of the last block (norm2 + mlp: "essentially an MLP head"), k the last k
blocks, and k = depth everything (full fine-tuning, the right end of Fig. 9). Frozen parameters
get requires_grad False and their modules stay in eval mode; the recipe is otherwise
fine-tuning's (paper A.1), with its own `cfg.partial` section.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial as bind
from pathlib import Path

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mae.config import ExperimentConfig
from mae.evaluate.finetune import finetune_setup
from mae.evaluate.loop import run_protocol
from mae.logger import MetricLogger


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


def partial(
    cfg: ExperimentConfig,
    pretrain_checkpoint: Path | None,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Fine-tune the last `cfg.partial.blocks` blocks; test-split top-1/top-5."""
    freeze = bind(freeze_all_but_last, blocks=cfg.partial.blocks)
    build = bind(finetune_setup, "partial", cfg, pretrain_checkpoint, freeze=freeze)
    return run_protocol("partial", cfg, workdir, build, logger, stop_after_epoch)
