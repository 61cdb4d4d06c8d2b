"""Linear probing, the official `main_linprobe.py` recipe (paper A.1, Table 10).

The encoder is frozen and sees whole images (no masking, no shuffle, eval mode: the same batch
gives the same features bit for bit). The probe is BatchNorm1d without affine parameters
followed by a linear layer (trunc_normal 0.01), trained with LARS (timm `Lars`: trust ratio on
matrices, plain momentum SGD without decay on biases, as MoCo v3's LARS) or SGD. Without
augmentation the features are computed once per split and the probe trains on them in seconds.

Under DDP the BatchNorm normalises with the statistics of the global batch (the ranks' sums
all-reduced, `SyncedBatchNorm1d`: torch's SyncBatchNorm runs on GPUs only), so N ranks train the
probe one process would. The cached features are encoded in shards, one contiguous block of each
split per rank, and gathered so that every rank holds them all: the encoder pass, the only costly
part of a probe, is divided by the number of ranks, where encoding on rank 0 and broadcasting
would leave the other ranks idle for it and move the same bytes.
"""

from __future__ import annotations

from functools import partial as bind
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.optim import Lars
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from mae.config import ExperimentConfig, LinprobeConfig
from mae.data import DatasetInfo, eval_sets, make_loader, rank_range
from mae.evaluate.classifier import build_classifier, init_head, load_encoder, pretrained_encoder
from mae.evaluate.loop import Setup, run_protocol
from mae.logger import MetricLogger
from mae.train.runtime import DistInfo, autocast, current_dist
from mae.train.schedule import peak_lr

PROBE_HEAD_STD = 0.01
LARS_MOMENTUM = 0.9
LARS_TRUST = 0.001
GATHER_ROWS = 1 << 16  # rows per rank in one all_gather of cached features


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) that gradients flow through: the gradient of a sum over ranks is the sum of
    every rank's gradient (the global objective is the ranks' losses together)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class SyncedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d normalising with the statistics of the global batch under DDP: each rank's
    count, sum and sum of squares are all-reduced (in float64; gradients flow through the
    all-reduce), and the running statistics follow the global ones on every rank. Alone, or in
    eval mode, it is BatchNorm1d exactly. Same parameters and buffers: checkpoints are alike."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        width = x.shape[1]
        wide = x.double()
        local = torch.cat([wide.new_tensor([len(x)]), wide.sum(0), (wide * wide).sum(0)])
        total = _SumOverRanks.apply(local)
        count, mean = total[0], total[1 : 1 + width] / total[0]
        var = total[1 + width :] / count - mean * mean
        self._track(mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
        out = (wide - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """Update the running statistics as BatchNorm does (momentum, or a cumulative mean)."""
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), float(momentum))
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), float(momentum))


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
    return nn.Sequential(SyncedBatchNorm1d(width, affine=False, eps=1e-6), linear)


def encode(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    precision: str,
    num_workers: int = 0,
    info: DistInfo | None = None,
) -> TensorDataset:
    """Features (float32, on the CPU) and labels of a whole split, in order. Under DDP each rank
    encodes its block of the split and every rank receives all of them. The encoder runs under
    `inference_mode`; the features are joined outside it, so the probe can train on them."""
    info = info or DistInfo()
    encoder.eval()
    feats, labels = [], []
    shard = Subset(dataset, rank_range(len(dataset), info.rank, info.world_size))
    loader = make_loader(shard, batch_size, False, seed=0, epoch=0, num_workers=num_workers)
    with torch.inference_mode():
        for images, targets in loader:
            with autocast(device, precision):
                feats.append(encoder(images.to(device)).float().cpu())
            labels.append(torch.as_tensor(targets))
    width = getattr(encoder, "num_features", 0)
    mine = (
        torch.cat(feats) if feats else torch.zeros(0, width),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64),
    )
    return TensorDataset(*(gather_blocks(t, len(dataset), device, info) for t in mine))


def gather_blocks(
    block: torch.Tensor, total: int, device: torch.device, info: DistInfo
) -> torch.Tensor:
    """Every rank's `rank_range` block of `total` rows, in rank order, on the CPU of every rank.
    The blocks are padded to one length and gathered `GATHER_ROWS` rows at a time, through this
    rank's device (NCCL gathers on GPUs only)."""
    if info.world_size == 1:
        return block
    size = len(rank_range(total, 0, info.world_size))
    padded = torch.zeros(size, *block.shape[1:], dtype=block.dtype)
    padded[: len(block)] = block
    parts: list[list[torch.Tensor]] = [[] for _ in range(info.world_size)]
    for start in range(0, size, GATHER_ROWS):
        piece = padded[start : start + GATHER_ROWS].to(device)
        pieces = [torch.empty_like(piece) for _ in range(info.world_size)]
        dist.all_gather(pieces, piece)
        for rank, got in enumerate(pieces):
            parts[rank].append(got.cpu())
    blocks = [
        torch.cat(got)[: len(rank_range(total, rank, info.world_size))]
        for rank, got in enumerate(parts)
    ]
    return torch.cat(blocks)


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
        info = current_dist()  # the group run_protocol joined (a lone process: trivial)
        train, val, test = (
            encode(encoder, split, hp.batch_size, device, precision, cfg.runtime.num_workers, info)
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
