"""The loop every evaluation protocol shares: epochs, per-iteration lr, top-1/top-5, resume.

A protocol only says what it trains (`Setup`): the model, its optimizer and loss, the three data
splits and which modules stay frozen. This module runs the epochs, evaluates on the validation
split after each one, checkpoints through `mae.train.checkpoint` and finally measures the last
epoch's model on the test split, as the official code reports its last epoch. A finished run
called again returns its stored final numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from torch import nn
from torch.utils.data import Dataset

from mae.config import EvalCommon, ExperimentConfig, run_key
from mae.data import make_loader
from mae.logger import MetricLogger, NullLogger
from mae.train.checkpoint import RECOVERY_TAG, Checkpointer, Progress, capture_rng
from mae.train.optim import set_lr
from mae.train.runtime import DistInfo, autocast, prepare, progress, seed_everything
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


def train_one_epoch(
    setup: Setup,
    hp: EvalCommon,
    epoch: int,
    device: torch.device,
    precision: str,
    show_progress: bool | None = None,
) -> tuple[float, float, int]:
    """One epoch, the lr set every iteration: (mean train loss, last lr at scale 1, iterations)."""
    loader = make_loader(
        setup.train_set,
        hp.batch_size,
        shuffle=True,
        seed=hp.seed,
        epoch=epoch,
        num_workers=setup.num_workers,
        drop_last=True,  # as official; Mixup needs whole (even) batches
    )
    iters = len(loader)
    if iters == 0:
        raise ValueError(f"batch size {hp.batch_size} exceeds the {len(setup.train_set)} images")
    base_lr = peak_lr(hp.blr, hp.batch_size)
    set_train_mode(setup.model, setup.frozen)
    total = torch.zeros((), device=device)
    lr = base_lr
    bar = progress(
        loader, show_progress, desc=f"epoch {epoch + 1}/{hp.epochs}", total=iters, leave=False
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
        with autocast(device, precision):
            loss = setup.criterion(setup.model(images), targets)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        total += loss.detach()  # read once per epoch: no wait for the device in the loop
    mean = total.item() / iters
    if not math.isfinite(mean):
        raise FloatingPointError(
            f"{type(setup.model).__name__} loss is {mean} in epoch {epoch + 1}"
        )
    return mean, lr, iters


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    precision: str,
    num_workers: int = 0,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent (top-5 is capped at the number of classes)."""
    model.eval()
    loader = make_loader(
        dataset, batch_size, shuffle=False, seed=0, epoch=0, num_workers=num_workers
    )
    correct1 = correct5 = seen = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(images)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        seen += len(labels)
    return 100.0 * correct1 / seen, 100.0 * correct5 / seen


def run_epoch(
    stage: str, setup: Setup, hp: EvalCommon, epoch: int, device: torch.device, runtime: Any
) -> tuple[dict[str, float], int]:
    """Train one epoch, then measure the validation split: (the epoch's numbers, iterations)."""
    loss, lr, iters = train_one_epoch(setup, hp, epoch, device, runtime.precision, runtime.progress)
    top1, top5 = evaluate(
        setup.model, setup.val_set, hp.batch_size, device, runtime.precision, setup.num_workers
    )
    numbers = {
        f"{stage}/train_loss": loss,
        f"{stage}/val_top1": top1,
        f"{stage}/val_top5": top5,
        f"{stage}/lr": lr,
    }
    log.info("%s epoch %d/%d: loss %.4f, val top-1 %.2f", stage, epoch + 1, hp.epochs, loss, top1)
    return numbers, iters


def test_numbers(
    stage: str, setup: Setup, hp: EvalCommon, device: torch.device, precision: str
) -> dict[str, float]:
    """The last epoch's model on the test split (the official code reports its last epoch)."""
    top1, top5 = evaluate(
        setup.model, setup.test_set, hp.batch_size, device, precision, setup.num_workers
    )
    return {f"{stage}/top1": top1, f"{stage}/top5": top5}


def run_protocol(
    stage: str,
    cfg: ExperimentConfig,
    workdir: Path,
    build: Callable[[torch.device], Setup],
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Train `build(device)` for `cfg.<stage>.epochs`, resuming from the run's checkpoint.

    Returns the test-split `<stage>/top1`, `<stage>/top5`, `<stage>/wall_time_s` (plus the last
    epoch's validation numbers); a run stopped by `stop_after_epoch` returns that epoch's numbers.
    """
    hp: EvalCommon = getattr(cfg, stage)
    logger = logger or NullLogger()
    checkpointer = Checkpointer(workdir, stage, run_key(cfg, stage), cfg)
    state = checkpointer.load() or Progress()
    if checkpointer.recovered:
        logger.set_tags({RECOVERY_TAG: checkpointer.recovered})
    if state.final is not None:
        log.info("%s already finished in %s", stage, workdir)
        return state.final

    device = prepare(cfg.runtime)
    seed_everything(hp.seed)
    setup = build(device)
    if state.epoch:
        checkpointer.restore(setup.model, setup.optimizer, DistInfo())
    for epoch in range(state.epoch, hp.epochs):
        numbers, iters = run_epoch(stage, setup, hp, epoch, device, cfg.runtime)
        done = state.advance(numbers, iters)
        logger.log_metrics(numbers, step=done)
        if done == hp.epochs:
            last = {k: v for k, v in numbers.items() if "/val_" in k}
            state.final = {**test_numbers(stage, setup, hp, device, cfg.runtime.precision), **last}
            state.final[f"{stage}/wall_time_s"] = checkpointer.elapsed(state)
            log.info("%s done: test top-1 %.2f", stage, state.final[f"{stage}/top1"])
        if state.final or done == stop_after_epoch or done % cfg.runtime.checkpoint_every == 0:
            checkpointer.save(setup.model, setup.optimizer, state, [capture_rng()])
        if done == stop_after_epoch:
            break
    return state.final or dict(state.history[-1])
