"""Linear probing, the official `main_linprobe.py` recipe (paper A.1, Table 10).

The encoder is frozen and sees whole images (no masking, no shuffle, eval mode: the same batch
gives the same features bit for bit). The probe is BatchNorm1d without affine parameters
followed by a linear layer (trunc_normal 0.01), trained with LARS (timm `Lars`: trust ratio on
matrices, plain momentum SGD without decay on biases, as MoCo v3's LARS) or SGD. Without
augmentation the features are computed once per split and the probe trains on them in seconds.
"""

from __future__ import annotations

from functools import partial as bind
from pathlib import Path

import torch
from timm.optim import Lars
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from mae.config import ExperimentConfig, LinprobeConfig
from mae.data import DatasetInfo, eval_sets, make_loader
from mae.evaluate.classifier import build_classifier, init_head, load_encoder, pretrained_encoder
from mae.evaluate.loop import Setup, run_protocol
from mae.logger import MetricLogger
from mae.train.runtime import autocast
from mae.train.schedule import peak_lr

PROBE_HEAD_STD = 0.01
LARS_MOMENTUM = 0.9
LARS_TRUST = 0.001


def feature_encoder(
    cfg: ExperimentConfig, info: DatasetInfo, pretrain_checkpoint: Path | None
) -> nn.Module:
    """The frozen encoder returning pooled features: class token or mean patch token after `norm`.

    No checkpoint gives timm's random init (the random-encoder reference probe).
    """
    pool = "token" if cfg.linprobe.pool == "cls" else "avg"
    encoder = build_classifier(cfg, info, pool=pool, fc_norm=False, num_classes=0)
    if pretrain_checkpoint is not None:
        load_encoder(encoder, pretrained_encoder(cfg, Path(pretrain_checkpoint)))
    return encoder.requires_grad_(False).eval()


def probe_head(width: int, num_classes: int) -> nn.Sequential:
    """Official: BatchNorm1d(affine=False, eps=1e-6) then Linear, the head's weight trunc_normal."""
    linear = nn.Linear(width, num_classes)
    init_head(linear, PROBE_HEAD_STD)
    return nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), linear)


def encode(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    precision: str,
    num_workers: int = 0,
) -> TensorDataset:
    """Features (float32, on the CPU) and labels of a whole split, in order. The encoder runs
    under `inference_mode`; the features are joined outside it, so the probe can train on them."""
    encoder.eval()
    feats, labels = [], []
    loader = make_loader(dataset, batch_size, False, seed=0, epoch=0, num_workers=num_workers)
    with torch.inference_mode():
        for images, targets in loader:
            with autocast(device, precision):
                feats.append(encoder(images.to(device)).float().cpu())
            labels.append(torch.as_tensor(targets))
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def probe_optimizer(head: nn.Module, hp: LinprobeConfig, lr: float) -> torch.optim.Optimizer:
    """LARS (or SGD) with momentum 0.9; decay and trust ratio only on matrices."""
    params = list(head.parameters())
    matrices = {"params": [p for p in params if p.ndim > 1], "weight_decay": hp.weight_decay}
    vectors = {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}
    if hp.optimizer == "sgd":
        return torch.optim.SGD([matrices, vectors], lr=lr, momentum=LARS_MOMENTUM)
    groups = [{**matrices, "always_adapt": True}, {**vectors, "always_adapt": False}]
    return Lars(groups, lr=lr, momentum=LARS_MOMENTUM, trust_coeff=LARS_TRUST)


def linprobe_setup(
    cfg: ExperimentConfig, pretrain_checkpoint: Path | None, device: torch.device
) -> Setup:
    hp = cfg.linprobe
    sets = eval_sets(cfg, "linprobe")
    encoder = feature_encoder(cfg, sets.info, pretrain_checkpoint).to(device)
    head = probe_head(encoder.embed_dim, sets.info.num_classes).to(device)
    optimizer = probe_optimizer(head, hp, peak_lr(hp.blr, hp.batch_size))
    criterion = nn.CrossEntropyLoss()
    precision = cfg.runtime.precision
    if hp.augmentation == "none":  # fixed inputs: encode every split once, train the head alone
        train, val, test = (
            encode(encoder, split, hp.batch_size, device, precision, cfg.runtime.num_workers)
            for split in (sets.train, sets.val, sets.test)
        )
        return Setup(head, optimizer, criterion, train, val, test)
    model = nn.Sequential(encoder, head)
    workers = cfg.runtime.num_workers
    return Setup(model, optimizer, criterion, *sets[:3], frozen=(encoder,), num_workers=workers)


def linprobe(
    cfg: ExperimentConfig,
    pretrain_checkpoint: Path | None,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Probe the frozen encoder with `cfg.linprobe`; test-split top-1/top-5."""
    build = bind(linprobe_setup, cfg, pretrain_checkpoint)
    return run_protocol("linprobe", cfg, workdir, build, logger, stop_after_epoch)
