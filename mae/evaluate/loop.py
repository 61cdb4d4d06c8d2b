"""The loop every evaluation protocol shares: epochs, per-iteration lr, top-1/top-5, resume.

A protocol only says what it trains (`Setup`): the model, its optimizer and loss, the three data
splits and which modules stay frozen. This module runs the epochs, evaluates on the validation
split after each one, checkpoints `workdir/checkpoint.pt` (model, optimizer, epoch, step, RNG,
metrics) and finally measures the last epoch's model on the test split, as the official code
reports its last epoch. A finished run called again returns its stored final numbers.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from torch import nn
from torch.utils.data import Dataset

from mae.config import EvalCommon, ExperimentConfig, canonical_json, eval_key
from mae.data import make_loader
from mae.logger import MetricLogger, NullLogger
from mae.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from mae.train.optim import set_lr
from mae.train.runtime import autocast, progress, resolve_device
from mae.train.schedule import lr_at, peak_lr

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


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


def seed_everything(seed: int) -> None:
    """Seed every stream a protocol draws from (init, drop path, augmentation, Mixup's numpy)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, iteration {it}")
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        total += loss.detach()
    return total.item() / iters, lr, iters


@torch.no_grad()
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


def run_protocol(
    stage: str,
    cfg: ExperimentConfig,
    workdir: Path,
    build: Callable[[torch.device], Setup],
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Train `build(device)` for `cfg.<stage>.epochs`, resuming from `workdir/checkpoint.pt`.

    Returns the test-split `<stage>/top1`, `<stage>/top5`, `<stage>/wall_time_s` (plus the last
    epoch's validation numbers); a run stopped by `stop_after_epoch` returns that epoch's numbers.
    """
    hp: EvalCommon = getattr(cfg, stage)
    logger = logger or NullLogger()
    path = Path(workdir) / CHECKPOINT
    key = eval_key(cfg, stage)
    state = load_checkpoint(path)
    if state is not None and state["key"] != key:
        raise ValueError(f"{path} belongs to another run (key {state['key'][:12]}, not {key[:12]})")
    if state is not None and "final" in state:
        log.info("%s already finished in %s", stage, workdir)
        return dict(state["final"])

    started = time.perf_counter()
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = resolve_device(cfg.runtime)
    precision = cfg.runtime.precision
    seed_everything(hp.seed)
    setup = build(device)
    first_epoch, step, spent = 0, 0, 0.0
    last: dict[str, float] = {}
    best: dict[str, float] = {}
    if state is not None:
        setup.model.load_state_dict(state["model"])
        setup.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        first_epoch, step, spent = state["epoch"], state["step"], state["wall_time_s"]
        last, best = state["last"], state["best"]
        log.info("%s resumes after epoch %d of %d", stage, first_epoch, hp.epochs)

    def snapshot(epoch: int, final: dict[str, float] | None = None) -> None:
        extra = {} if final is None else {"final": final}
        save_checkpoint(path, {
            "stage": stage, "key": key, "config": canonical_json(cfg),
            "model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
            "epoch": epoch, "step": step, "rng": capture_rng(),
            "wall_time_s": spent + time.perf_counter() - started, "last": last, "best": best,
            **extra,
        })  # fmt: skip

    for epoch in range(first_epoch, hp.epochs):
        train_loss, lr, iters = train_one_epoch(
            setup, hp, epoch, device, precision, cfg.runtime.progress
        )
        step += iters
        val_top1, val_top5 = evaluate(
            setup.model, setup.val_set, hp.batch_size, device, precision, setup.num_workers
        )
        last = {f"{stage}/train_loss": train_loss, f"{stage}/val_top1": val_top1,
                f"{stage}/val_top5": val_top5, f"{stage}/lr": lr}  # fmt: skip
        logger.log_metrics(last, step=epoch + 1)
        if val_top1 > best.get("val_top1", -1.0):
            best = {"val_top1": val_top1, "val_top5": val_top5, "epoch": float(epoch + 1)}
        log.info("%s epoch %d/%d: loss %.4f, val top-1 %.2f", stage, epoch + 1, hp.epochs,
                 train_loss, val_top1)  # fmt: skip
        done = epoch + 1
        if done == stop_after_epoch and done < hp.epochs:
            snapshot(done)
            return dict(last)
        if done % cfg.runtime.checkpoint_every == 0 and done < hp.epochs:
            snapshot(done)

    top1, top5 = evaluate(
        setup.model, setup.test_set, hp.batch_size, device, precision, setup.num_workers
    )
    final = {
        f"{stage}/top1": top1,
        f"{stage}/top5": top5,
        f"{stage}/wall_time_s": spent + time.perf_counter() - started,
        f"{stage}/val_top1": last.get(f"{stage}/val_top1", float("nan")),
        f"{stage}/val_top5": last.get(f"{stage}/val_top5", float("nan")),
    }
    snapshot(hp.epochs, final)
    log.info("%s done: test top-1 %.2f in %.1f s", stage, top1, final[f"{stage}/wall_time_s"])
    return final
