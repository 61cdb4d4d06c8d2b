"""MAE pre-training as the official recipe (`main_pretrain.py` + `engine_pretrain.py`).

AdamW (betas 0.9/0.95), lr = blr * batch / 256 set every iteration by warmup + half-cycle cosine,
weight decay on matrices only, gradient accumulation (`accum_iter` micro-batches per step), bf16
autocast on CUDA, DDP across processes. Every `checkpoint_every` epochs the whole state (model,
optimizer, scaler, epoch, step, RNG streams, per-epoch history) is written atomically, and a run
started again continues from it exactly: on the CPU a run stopped and resumed ends bit-identical
to one that never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset

from mae import visualize
from mae.config import ExperimentConfig, pretrain_key
from mae.data import make_loader, pretrain_set
from mae.logger import MetricLogger, NullLogger
from mae.model import build_mae
from mae.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from mae.train.optim import build_optimizer, set_lr
from mae.train.runtime import (
    DistInfo,
    autocast,
    cleanup_distributed,
    init_distributed,
    progress,
    resolve_device,
)
from mae.train.schedule import lr_at, peak_lr

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
RECONSTRUCTION = "reconstruction.png"


@dataclass
class Run:
    """What one epoch needs besides the model and optimizer."""

    cfg: ExperimentConfig
    device: torch.device
    dist: DistInfo
    lr: float  # peak rate
    micro_batches: int  # accum_iter

    @property
    def ddp(self) -> bool:
        return self.dist.world_size > 1


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def per_rank_batch(cfg: ExperimentConfig, world_size: int) -> int:
    """Images each process loads per optimizer step; the global batch is `pretrain.batch_size`."""
    batch, accum = cfg.pretrain.batch_size, cfg.pretrain.accum_iter
    if batch % (world_size * accum):
        raise ValueError(
            f"pretrain.batch_size {batch} must be divisible by world size {world_size} x "
            f"pretrain.accum_iter {accum}"
        )
    return batch // world_size


def epoch_loader(
    dataset: Dataset, cfg: ExperimentConfig, epoch: int, info: DistInfo, batch: int
) -> torch.utils.data.DataLoader:
    """This process's batches for `epoch`: a pure function of (seed, epoch, rank), so a resumed
    run replays them. Under DDP each rank takes its DistributedSampler shard of the order."""
    seed, workers = cfg.pretrain.seed, cfg.runtime.num_workers
    if info.world_size == 1:
        return make_loader(dataset, batch, True, seed, epoch, workers, drop_last=True)
    sampler = DistributedSampler(
        dataset, info.world_size, info.rank, shuffle=True, seed=seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    return make_loader(Subset(dataset, list(sampler)), batch, False, seed, epoch, workers, True)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: torch.utils.data.DataLoader,
    epoch: int,
    run: Run,
) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's mean loss and lr, time and throughput."""
    cfg, steps = run.cfg, len(loader)
    pcfg = cfg.pretrain
    start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    lr_sum = 0.0
    show_every = max(1, min(cfg.runtime.log_every, steps // 10))
    model.train()
    bar = progress(
        loader,
        enabled=cfg.runtime.progress if run.dist.is_main else False,
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
                scaler.scale(loss / len(micro)).backward()
            loss_sum += loss.detach()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if (it + 1) % show_every == 0:  # .item() waits for the GPU: not every step
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


def summarise(history: list[dict[str, float]]) -> dict[str, float]:
    """The numbers a finished (or stopped) run reports, from its per-epoch history."""
    return {
        "pretrain/loss": history[-1]["loss"],
        "pretrain/wall_time_s": sum(h["epoch_time_s"] for h in history),
        "pretrain/images_per_s": sum(h["images_per_s"] for h in history) / len(history),
        "pretrain/epochs": float(len(history)),
    }


def gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), so each rank resumes its own streams."""
    state = capture_rng()
    if info.world_size == 1:
        return [state]
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def resume(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: DistInfo,
    seed: int,
) -> tuple[int, int, list[dict[str, float]]]:
    """Load a checkpoint's state and continue this rank's RNG streams: (epoch, step, history)."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    rngs, epoch = ckpt["rng"], ckpt["epoch"]
    if len(rngs) == info.world_size:
        restore_rng(rngs[info.rank])
    else:  # moved to another number of processes: the global batch holds, exactness cannot
        log.warning(
            "checkpoint from %d processes resumed on %d: fresh RNG streams, not an exact resume",
            len(rngs),
            info.world_size,
        )
        seed_everything(seed + info.rank + 1000 * epoch)
    return epoch, ckpt["step"], list(ckpt["history"])


def pretrain(
    cfg: ExperimentConfig,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Pre-train (or resume, or just report) the run of `cfg` in `workdir`; see the module doc."""
    info = init_distributed()
    try:
        return _pretrain(cfg, Path(workdir), logger or NullLogger(), stop_after_epoch, info)
    finally:
        cleanup_distributed(info)


def _pretrain(
    cfg: ExperimentConfig,
    workdir: Path,
    logger: MetricLogger,
    stop_after_epoch: int | None,
    info: DistInfo,
) -> dict[str, float]:
    key, ckpt_path, picture = pretrain_key(cfg), workdir / CHECKPOINT, workdir / RECONSTRUCTION
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None and ckpt["key"] != key:
        raise ValueError(
            f"{ckpt_path} belongs to pre-training {ckpt['key'][:12]}, not to this config's "
            f"{key[:12]}: use another workdir or remove the checkpoint"
        )
    if ckpt is not None and ckpt["final"] is not None:
        log.info("pre-training %s already finished in %s", key[:12], workdir)
        if info.is_main and not picture.exists() and cfg.runtime.recon_images:
            visualize.reconstruction_from_checkpoint(ckpt_path, picture, cfg.runtime.recon_images)
        return dict(ckpt["final"])

    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = resolve_device(cfg.runtime, info.local_rank)
    pcfg = cfg.pretrain
    batch = per_rank_batch(cfg, info.world_size)
    seed_everything(pcfg.seed + info.rank)
    core = build_mae(cfg).to(device)
    dataset = pretrain_set(cfg)  # before the RNG restore: building may draw from the streams
    run = Run(cfg, device, info, peak_lr(pcfg.blr, pcfg.batch_size), pcfg.accum_iter)
    optimizer = build_optimizer(core, pcfg, run.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16/fp32 need no loss scaling
    start_epoch, step, history = 0, 0, []
    if ckpt is not None:
        start_epoch, step, history = resume(ckpt, core, optimizer, scaler, info, pcfg.seed)
        log.info("resuming pre-training %s after epoch %d", key[:12], start_epoch)
        if stop_after_epoch is not None and start_epoch >= stop_after_epoch:
            return summarise(history)
    model: nn.Module = core
    if run.ddp:
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(core, device_ids=ids, find_unused_parameters=True)

    for epoch in range(start_epoch, pcfg.epochs):
        loader = epoch_loader(dataset, cfg, epoch, info, batch)
        if len(loader) == 0:
            raise ValueError(f"{len(dataset)} images make no full batch of {batch} per process")
        stats = train_one_epoch(model, optimizer, scaler, loader, epoch, run)
        step += len(loader)
        history.append(stats)
        done = epoch + 1
        finished = done == pcfg.epochs
        stopping = done == stop_after_epoch
        final = summarise(history) if finished else None
        if info.is_main:
            logger.log_metrics({f"pretrain/{k}": v for k, v in stats.items()}, step=done)
            log.info(
                "pretrain epoch %d/%d  loss %.4f  lr %.3g  %.1f s  %.0f img/s",
                done,
                pcfg.epochs,
                stats["loss"],
                stats["lr"],
                stats["epoch_time_s"],
                stats["images_per_s"],
            )
        if finished or stopping or done % cfg.runtime.checkpoint_every == 0:
            rngs = gather_rng(info)
            if info.is_main:
                state = {
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": done,
                    "step": step,
                    "rng": rngs,
                    "history": history,
                    "final": final,
                    "config": cfg.model_dump_json(),
                    "key": key,
                }
                save_checkpoint(ckpt_path, state)
        if stopping and not finished:
            return summarise(history)

    if info.is_main and cfg.runtime.recon_images and visualize.can_draw(core):
        visualize.render_for_config(core, cfg, picture, cfg.runtime.recon_images)
        logger.log_artifact(picture)
    return summarise(history)
