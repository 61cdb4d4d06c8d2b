"""The loop every evaluation protocol shares: epochs, per-iteration lr, top-1/top-5, resume, DDP.

A protocol only says what it trains (`Setup`): the model, its optimizer and loss, the three data
splits and which modules stay frozen. This module runs the epochs, evaluates on the validation
split after each one, checkpoints through `mae.train.checkpoint` and finally measures the last
epoch's model on the test split, as the official code reports its last epoch. A finished run
called again returns its stored final numbers.

Under DDP (RANK/WORLD_SIZE set by torchrun, or by a job of several Slurm tasks) `batch_size` is
the global batch, as in the official recipe: each rank trains on its share of every global batch
(the same global batches one process would load), DistributedDataParallel averages the
gradients, and the lr stays blr * global batch / 256. Validation and test splits are cut into one
block per rank and the hit counts summed; the train loss is summed on the device and
all-reduced once per epoch (no host sync per step; a NaN ends every rank at the same epoch).
Rank 0 alone logs and writes checkpoints, which hold every rank's RNG; every rank resumes from
them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import Mixup
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

from mae.config import EvalCommon, ExperimentConfig, run_key
from mae.data import make_loader, rank_range
from mae.logger import MetricLogger, NullLogger
from mae.train.checkpoint import RECOVERY_TAG, Checkpointer, Progress, gather_rng
from mae.train.optim import set_lr
from mae.train.runtime import (
    DistInfo,
    all_reduce_sum,
    autocast,
    init_distributed,
    prepare,
    progress,
    seed_everything,
)
from mae.train.schedule import lr_at, peak_lr

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What a protocol trains, and on what. `frozen` modules stay in eval mode while training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    train_set: Dataset
    val_set: Dataset
    test_set: Dataset
    mixup: Mixup | None = None
    frozen: Sequence[nn.Module] = ()
    num_workers: int = 0


def set_train_mode(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """`model.train()`, then frozen parts back to eval (no drop path, fixed BN statistics)."""
    model.train()
    for module in frozen:
        module.eval()


@dataclass(frozen=True)
class Place:
    """Where a protocol runs: device, precision, progress bar, and its rank among the processes."""

    device: torch.device
    precision: str = "auto"
    progress: bool | None = None
    dist: DistInfo = DistInfo()


def per_rank_batch(stage: str, batch_size: int, world_size: int, even: bool = False) -> int:
    """Images each rank loads per step; `<stage>.batch_size` is the global batch. Mixup and
    CutMix pair images within a batch: `even` asks for an even share."""
    share, rest = divmod(batch_size, world_size)
    if rest or (even and share % 2):
        need = "an even multiple" if even else "a multiple"
        raise ValueError(
            f"{stage}.batch_size {batch_size} (the global batch) must be {need} of the "
            f"{world_size} processes"
        )
    return share


def train_one_epoch(
    setup: Setup, hp: EvalCommon, epoch: int, place: Place, net: nn.Module | None = None
) -> tuple[float, float, int]:
    """One epoch, the lr set every iteration: (mean train loss, last lr at scale 1, iterations).
    `net` is the module to train through (`setup.model` wrapped in DDP across processes)."""
    info, device = place.dist, place.device
    net = net or setup.model
    loader = make_loader(
        setup.train_set,
        hp.batch_size // info.world_size,
        shuffle=True,
        seed=hp.seed,
        epoch=epoch,
        num_workers=setup.num_workers,
        drop_last=True,  # as official; Mixup needs whole (even) batches
        rank=info.rank,
        world_size=info.world_size,
    )
    iters = len(loader)
    if iters == 0:
        raise ValueError(f"batch size {hp.batch_size} exceeds the {len(setup.train_set)} images")
    base_lr = peak_lr(hp.blr, hp.batch_size)
    set_train_mode(setup.model, setup.frozen)
    total, lr = torch.zeros((), device=device), base_lr
    bar = progress(
        loader, place.progress, desc=f"epoch {epoch + 1}/{hp.epochs}", total=iters, leave=False
    )
    for it, (images, labels) in enumerate(bar):
        lr = lr_at(
            epoch + it / iters,
            lr=base_lr,
            min_lr=hp.min_lr,
            warmup_epochs=hp.warmup_epochs,
            epochs=hp.epochs,
        )
        set_lr(setup.optimizer, lr)
        images = images.to(device, non_blocking=True)
        targets = labels.to(device, non_blocking=True)
        if setup.mixup is not None:
            images, targets = setup.mixup(images, targets)
        with autocast(device, place.precision):
            loss = setup.criterion(net(images), targets)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        total += loss.detach()  # read once per epoch: no wait for the device in the loop
    mean = all_reduce_sum(total, info).item() / (iters * info.world_size)
    if not math.isfinite(mean):
        raise FloatingPointError(f"loss is {mean} in epoch {epoch + 1}")
    return mean, lr, iters


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    place: Place,
    num_workers: int = 0,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent (top-5 is capped at the number of classes). Under DDP
    each rank measures its block of the split and the counts are summed: every image once."""
    info, device = place.dist, place.device
    model.eval()
    if info.world_size > 1:
        dataset = Subset(dataset, rank_range(len(dataset), info.rank, info.world_size))
    batch = max(1, batch_size // info.world_size)
    loader = make_loader(dataset, batch, shuffle=False, seed=0, epoch=0, num_workers=num_workers)
    counts = torch.zeros(3, dtype=torch.int64, device=device)  # top-1 hits, top-5 hits, images
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, place.precision):
            logits = model(images)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        counts += torch.stack(
            [hits[:, 0].sum(), hits.any(dim=1).sum(), labels.new_tensor(len(labels))]
        )
    correct1, correct5, seen = all_reduce_sum(counts, info).tolist()
    return 100.0 * correct1 / seen, 100.0 * correct5 / seen


def run_epoch(
    stage: str, setup: Setup, hp: EvalCommon, epoch: int, place: Place, net: nn.Module
) -> tuple[dict[str, float], int]:
    """Train one epoch, then measure the validation split: (the epoch's numbers, iterations)."""
    loss, lr, iters = train_one_epoch(setup, hp, epoch, place, net)
    top1, top5 = evaluate(setup.model, setup.val_set, hp.batch_size, place, setup.num_workers)
    numbers = {
        f"{stage}/train_loss": loss,
        f"{stage}/val_top1": top1,
        f"{stage}/val_top5": top5,
        f"{stage}/lr": lr,
    }
    if place.dist.is_main:
        log.info(
            "%s epoch %d/%d: loss %.4f, val top-1 %.2f", stage, epoch + 1, hp.epochs, loss, top1
        )
    return numbers, iters


def test_numbers(stage: str, setup: Setup, hp: EvalCommon, place: Place) -> dict[str, float]:
    """The last epoch's model on the test split (the official code reports its last epoch)."""
    top1, top5 = evaluate(setup.model, setup.test_set, hp.batch_size, place, setup.num_workers)
    return {f"{stage}/top1": top1, f"{stage}/top5": top5}


def parallel(setup: Setup, place: Place) -> nn.Module:
    """`setup.model` in DistributedDataParallel across processes (itself in a lone one); frozen
    parameters (requires_grad False) are neither synchronised nor updated."""
    if place.dist.world_size == 1:
        return setup.model
    device = place.device
    return DistributedDataParallel(
        setup.model, device_ids=[device.index] if device.type == "cuda" else None
    )


def run_protocol(
    stage: str,
    cfg: ExperimentConfig,
    workdir: Path,
    build: Callable[[torch.device], Setup],
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Train `build(device)` for `cfg.<stage>.epochs`, resuming from the run's checkpoint; under
    DDP on every rank (see the module doc).

    Returns the test-split `<stage>/top1`, `<stage>/top5`, `<stage>/wall_time_s` (plus the last
    epoch's validation numbers); a run stopped by `stop_after_epoch` returns that epoch's numbers.
    """
    info = init_distributed()
    logger = (logger or NullLogger()) if info.is_main else NullLogger()
    return _run_protocol(stage, cfg, workdir, build, logger, stop_after_epoch, info)


def _run_protocol(
    stage: str,
    cfg: ExperimentConfig,
    workdir: Path,
    build: Callable[[torch.device], Setup],
    logger: MetricLogger,
    stop_after_epoch: int | None,
    info: DistInfo,
) -> dict[str, float]:
    hp: EvalCommon = getattr(cfg, stage)
    checkpointer = Checkpointer(workdir, stage, run_key(cfg, stage), cfg)
    state = checkpointer.load() or Progress()
    if checkpointer.recovered:
        logger.set_tags({RECOVERY_TAG: checkpointer.recovered})
    if state.final is not None:
        log.info("%s already finished in %s", stage, workdir)
        return state.final

    device = prepare(cfg.runtime, info.local_rank)
    bar = cfg.runtime.progress if info.is_main else False
    place = Place(device, cfg.runtime.precision, bar, info)
    seed_everything(hp.seed + info.rank)
    setup = build(device)
    per_rank_batch(stage, hp.batch_size, info.world_size, even=setup.mixup is not None)
    net = parallel(setup, place)
    if state.epoch:
        checkpointer.restore(setup.model, setup.optimizer, info)
    for epoch in range(state.epoch, hp.epochs):
        numbers, iters = run_epoch(stage, setup, hp, epoch, place, net)
        done = state.advance(numbers, iters)
        logger.log_metrics(numbers, step=done)
        if done == hp.epochs:
            last = {k: v for k, v in numbers.items() if "/val_" in k}
            state.final = {**test_numbers(stage, setup, hp, place), **last}
            state.final[f"{stage}/wall_time_s"] = checkpointer.elapsed(state)
            if info.is_main:
                log.info("%s done: test top-1 %.2f", stage, state.final[f"{stage}/top1"])
        if state.final or done == stop_after_epoch or done % cfg.runtime.checkpoint_every == 0:
            rngs = gather_rng(info)
            if info.is_main:
                checkpointer.save(setup.model, setup.optimizer, state, rngs)
        if done == stop_after_epoch:
            break
    return state.final or dict(state.history[-1])
