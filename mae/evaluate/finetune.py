"""End-to-end fine-tuning, the official `main_finetune.py` recipe (paper A.1, Table 9).

Layer-wise lr decay (timm's BEiT-style groups: patch embedding, class token and position
embedding at the smallest scale, the head at 1), AdamW, warmup + cosine per iteration,
Mixup/CutMix with label smoothing, drop path, head init trunc_normal(2e-5). Partial fine-tuning
and the from-scratch baseline reuse `finetune_setup` with their own config section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial as bind
from pathlib import Path

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import nn

from mae.config import ExperimentConfig, FinetuneConfig
from mae.data import eval_sets
from mae.evaluate.classifier import build_classifier, init_head, load_encoder, pretrained_encoder
from mae.evaluate.loop import Setup, run_protocol
from mae.logger import MetricLogger
from mae.train.optim import adamw
from mae.train.schedule import peak_lr

FINETUNE_HEAD_STD = 2e-5

# Called on the built classifier before the optimizer sees it; returns the modules to keep frozen.
Freeze = Callable[[VisionTransformer], Sequence[nn.Module]]


def layer_decay_groups(model: VisionTransformer, hp: FinetuneConfig) -> list[dict]:
    """Official `lr_decay.param_groups_lrd`: scale decay^(depth + 1 - layer), no decay on 1-D."""
    return param_groups_layer_decay(
        model,
        weight_decay=hp.weight_decay,
        no_weight_decay_list=model.no_weight_decay(),
        layer_decay=hp.layer_decay,
    )


def build_mixup(hp: FinetuneConfig, num_classes: int) -> Mixup | None:
    """timm Mixup/CutMix with label smoothing folded into the targets; None when both are off."""
    if hp.mixup <= 0 and hp.cutmix <= 0:
        return None
    if hp.batch_size % 2:
        raise ValueError(f"Mixup/CutMix need an even batch size, got {hp.batch_size}")
    return Mixup(
        mixup_alpha=hp.mixup,
        cutmix_alpha=hp.cutmix,
        label_smoothing=hp.smoothing,
        num_classes=num_classes,
    )


def finetune_setup(
    stage: str,
    cfg: ExperimentConfig,
    pretrain_checkpoint: Path | None,
    device: torch.device,
    freeze: Freeze | None = None,
) -> Setup:
    """The fine-tuning recipe with `cfg.<stage>`; no checkpoint means a randomly initialised ViT."""
    hp: FinetuneConfig = getattr(cfg, stage)
    sets = eval_sets(cfg, stage)
    model = build_classifier(
        cfg, sets.info, pool="avg" if hp.global_pool else "token", drop_path=hp.drop_path
    )
    if pretrain_checkpoint is not None:
        load_encoder(model, pretrained_encoder(cfg, Path(pretrain_checkpoint)))
        init_head(model.head, FINETUNE_HEAD_STD)
    frozen = tuple(freeze(model)) if freeze else ()
    model.to(device)
    optimizer = adamw(
        layer_decay_groups(model, hp), peak_lr(hp.blr, hp.batch_size), tuple(hp.betas)
    )
    mixup = build_mixup(hp, sets.info.num_classes)
    criterion = (
        SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=hp.smoothing)
    )
    return Setup(
        model=model,
        optimizer=optimizer,
        criterion=criterion,
        train_set=sets.train,
        val_set=sets.val,
        test_set=sets.test,
        mixup=mixup,
        frozen=frozen,
        num_workers=cfg.runtime.num_workers,
    )


def finetune(
    cfg: ExperimentConfig,
    pretrain_checkpoint: Path | None,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Fine-tune the whole pre-trained encoder with `cfg.finetune`; test-split top-1/top-5."""
    build = bind(finetune_setup, "finetune", cfg, pretrain_checkpoint)
    return run_protocol("finetune", cfg, workdir, build, logger, stop_after_epoch)
