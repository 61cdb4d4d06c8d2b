"""MAE pre-training as the official recipe (`main_pretrain.py` + `engine_pretrain.py`).

AdamW (betas 0.9/0.95), lr = blr * batch / 256 set every iteration by warmup + half-cycle cosine,
weight decay on matrices only, gradient accumulation (`accum_iter` micro-batches per step), bf16
autocast on CUDA, DDP across processes. Every `checkpoint_every` epochs the whole state is written
(`mae.train.checkpoint`), and a run started again continues from it exactly: on the CPU a run
stopped and resumed ends bit-identical to one that never stopped. A target that learns from the
data (PCA) or reads a tokenizer (dVAE tokens) is prepared once, before the first step
(`mae.train.fit_target`), and travels in the checkpoints from then on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from mae.config import ExperimentConfig, pretrain_key
from mae.data import make_loader, pretrain_set
from mae.logger import MetricLogger, NullLogger
from mae.model import MaskedAutoencoder, Target, build_mae
from mae.paths import RECONSTRUCTION
from mae.train import visualize
from mae.train.checkpoint import RECOVERY_TAG, Checkpointer, Progress, gather_rng
from mae.train.fit_target import fit_target
from mae.train.optim import build_optimizer, set_lr
from mae.train.runtime import (
    DistInfo,
    autocast,
    compiled,
    init_distributed,
    prepare,
    progress,
    progress_enabled,
    seed_everything,
)
from mae.train.schedule import lr_at, peak_lr

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything one pre-training trains with: built once, then driven epoch by epoch."""

    cfg: ExperimentConfig
    device: torch.device
    dist: DistInfo
    lr: float  # peak rate
    micro_batches: int  # accum_iter
    core: MaskedAutoencoder  # the model (what checkpoints hold)
    model: nn.Module  # `core`, wrapped in DDP across processes
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    batch: int  # images per process per optimizer step

    @property
    def ddp(self) -> bool:
        return self.dist.world_size > 1


def per_rank_batch(cfg: ExperimentConfig, world_size: int) -> int:
    """Images each process loads per optimizer step; the global batch is `pretrain.batch_size`."""
    batch, accum = cfg.pretrain.batch_size, cfg.pretrain.accum_iter
    if batch % (world_size * accum):
        raise ValueError(
            f"pretrain.batch_size {batch} must be divisible by world size {world_size} x "
            f"pretrain.accum_iter {accum}"
        )
    return batch // world_size


def epoch_loader(run: Run, epoch: int) -> torch.utils.data.DataLoader:
    """This process's batches for `epoch`: a pure function of (seed, epoch, rank), so a resumed
    run replays them. Under DDP each rank loads its share of every global batch, and the global
    batches are those one process would load."""
    cfg, info = run.cfg, run.dist
    loader = make_loader(
        run.dataset,
        run.batch,
        shuffle=True,
        seed=cfg.pretrain.seed,
        epoch=epoch,
        num_workers=cfg.runtime.num_workers,
        drop_last=True,
        rank=info.rank,
        world_size=info.world_size,
    )
    if len(loader) == 0:
        glob = run.batch * info.world_size
        raise ValueError(f"{len(run.dataset)} images make no full global batch of {glob}")
    return loader


def train_one_epoch(run: Run, loader: torch.utils.data.DataLoader, epoch: int) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's mean loss and lr, time and throughput."""
    cfg, steps, model, optimizer = run.cfg, len(loader), run.model, run.optimizer
    pcfg = cfg.pretrain
    start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    lr_sum = 0.0
    show_every = max(1, min(cfg.runtime.log_every, steps // 10))
    shown = run.dist.is_main and progress_enabled(cfg.runtime.progress)
    model.train()
    bar = progress(
        loader,
        enabled=shown,
        desc=f"epoch {epoch + 1}/{pcfg.epochs}",
        total=steps,
        leave=False,
    )
    for it, (images, _) in enumerate(bar):
        lr = lr_at(
            epoch + it / steps,
            lr=run.lr,
            min_lr=pcfg.min_lr,
            warmup_epochs=pcfg.warmup_epochs,
            epochs=pcfg.epochs,
        )
        set_lr(optimizer, lr)
        lr_sum += lr
        micro = images.to(run.device, non_blocking=True).chunk(run.micro_batches)
        for j, chunk in enumerate(micro):
            last = j == len(micro) - 1
            with model.no_sync() if run.ddp and not last else contextlib.nullcontext():
                with autocast(run.device, cfg.runtime.precision):
                    loss = model(chunk).loss
                (loss / len(micro)).backward()  # bf16 and fp32 need no loss scaling
            loss_sum += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if shown and (it + 1) % show_every == 0:  # .item() waits for the GPU: rarely, if shown
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)

    if run.ddp:
        dist.all_reduce(loss_sum)
        loss_sum /= run.dist.world_size
    mean_loss = loss_sum.item() / (steps * run.micro_batches)
    elapsed = time.perf_counter() - start
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"pre-training loss is {mean_loss} in epoch {epoch + 1}")
    return {
        "loss": mean_loss,
        "lr": lr_sum / steps,
        "epoch_time_s": elapsed,
        "images_per_s": steps * pcfg.batch_size / elapsed,
    }


def summarise(history: list[dict[str, float]], target: Target) -> dict[str, float]:
    """The numbers a finished (or stopped) run reports, from its per-epoch history and its fitted
    target (e.g. the variance the PCA basis explains)."""
    return {
        "pretrain/loss": history[-1]["loss"],
        "pretrain/wall_time_s": sum(h["epoch_time_s"] for h in history),
        "pretrain/images_per_s": sum(h["images_per_s"] for h in history) / len(history),
        "pretrain/epochs": float(len(history)),
        **{f"pretrain/{k}": v for k, v in target.summary().items()},
    }


def build_run(cfg: ExperimentConfig, info: DistInfo) -> Run:
    """Model, optimizer and data of a pre-training, seeded per rank."""
    pcfg = cfg.pretrain
    device = prepare(cfg.runtime, info.local_rank)
    batch = per_rank_batch(cfg, info.world_size)
    lr = peak_lr(pcfg.blr, pcfg.batch_size)
    seed_everything(pcfg.seed + info.rank)
    core = build_mae(cfg).to(device)
    dataset = pretrain_set(cfg)  # before an RNG restore: building may draw from the streams
    model: nn.Module = core
    if info.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(core, device_ids=ids, find_unused_parameters=True)
    model = compiled(model, device, cfg.runtime.compile)
    optimizer = build_optimizer(core, pcfg, lr)
    return Run(cfg, device, info, lr, pcfg.accum_iter, core, model, optimizer, dataset, batch)


def report_epoch(logger: MetricLogger, stats: dict[str, float], done: int, epochs: int) -> None:
    logger.log_metrics({f"pretrain/{k}": v for k, v in stats.items()}, step=done)
    log.info(
        "pretrain epoch %d/%d  loss %.4f  lr %.3g  %.1f s  %.0f img/s",
        done,
        epochs,
        stats["loss"],
        stats["lr"],
        stats["epoch_time_s"],
        stats["images_per_s"],
    )


def pretrain(
    cfg: ExperimentConfig,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
    tokenizer_checkpoint: Path | None = None,
) -> dict[str, float]:
    """Pre-train (or resume, or just report) the run of `cfg` in `workdir`; see the module doc.
    A dVAE target with the in-project tokenizer reads it from `tokenizer_checkpoint`."""
    info = init_distributed()
    return _pretrain(
        cfg, Path(workdir), logger or NullLogger(), stop_after_epoch, info, tokenizer_checkpoint
    )


def _pretrain(
    cfg: ExperimentConfig,
    workdir: Path,
    logger: MetricLogger,
    stop_after_epoch: int | None,
    info: DistInfo,
    tokenizer_checkpoint: Path | None,
) -> dict[str, float]:
    """Build, resume (or prepare the target), loop over the epochs, finish."""
    epochs, picture = cfg.pretrain.epochs, workdir / RECONSTRUCTION
    checkpointer = Checkpointer(workdir, "pretrain", pretrain_key(cfg), cfg)
    state = checkpointer.load() or Progress()
    if checkpointer.recovered and info.is_main:
        logger.set_tags({RECOVERY_TAG: checkpointer.recovered})
    if state.final is not None:
        log.info("pre-training %s already finished in %s", checkpointer.key[:12], workdir)
        if info.is_main and cfg.runtime.recon_images and not picture.exists():
            visualize.reconstruction_from_checkpoint(
                checkpointer.path, picture, cfg.runtime.recon_images
            )
        return state.final

    run = build_run(cfg, info)
    if state.epoch:
        checkpointer.restore(run.core, run.optimizer, info)
    else:
        fitted = fit_target(run.core, cfg, tokenizer_checkpoint)
        if fitted and info.is_main:
            logger.log_metrics({f"pretrain/{k}": v for k, v in fitted.items()}, step=0)
    if stop_after_epoch is not None and state.epoch >= stop_after_epoch:
        return summarise(state.history, run.core.target)
    for epoch in range(state.epoch, epochs):
        loader = epoch_loader(run, epoch)
        stats = train_one_epoch(run, loader, epoch)
        done = state.advance(stats, len(loader))
        if info.is_main:
            report_epoch(logger, stats, done, epochs)
        if done == epochs:
            state.final = summarise(state.history, run.core.target)
        if state.final or done == stop_after_epoch or done % cfg.runtime.checkpoint_every == 0:
            rngs = gather_rng(info)
            if info.is_main:
                checkpointer.save(run.core, run.optimizer, state, rngs)
        if done == stop_after_epoch:
            break

    if state.final is None:
        return summarise(state.history, run.core.target)
    if info.is_main and cfg.runtime.recon_images and visualize.can_draw(run.core):
        visualize.render_for_config(run.core, cfg, picture, cfg.runtime.recon_images)
        logger.log_artifact(picture)
    return state.final
