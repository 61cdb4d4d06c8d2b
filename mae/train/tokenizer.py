"""The tokenizer stage: train the in-project dVAE on the pre-training split, and hand tokenizers
to the dVAE-target pre-trainings that read them.

Training follows DALL-E's recipe at a small scale: the encoder's logits are relaxed with
Gumbel-softmax, whose temperature anneals exponentially from `tokenizer.temperature_start` to
`temperature_end`; the loss is the reconstruction's mean squared error plus `kl_weight` times the
KL divergence of the codes from the uniform prior (what keeps the codebook in use). AdamW with
warmup and cosine decay. Every epoch the tokenizer is measured the way pre-training uses it, on a
fixed sample of pre-training images without augmentation: hard tokens (the most likely code of
each patch) decoded back to pixels give `recon_mse`, and their frequencies the codebook's
`perplexity` (the exponential of their entropy: 1 = collapse, the vocabulary = uniform use) and
the share of `codes_used`. The run checkpoints and resumes through `mae.train.checkpoint`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mae.config import ExperimentConfig, run_key, uses_tokenizer_stage
from mae.data import dataset_info, make_loader, pretrain_set
from mae.logger import MetricLogger, NullLogger
from mae.model.tokenizer import DalleTokenizer, DiscreteVAE, Tokenizer, build_tokenizer
from mae.paths import RECONSTRUCTION
from mae.train import visualize
from mae.train.checkpoint import Checkpointer, Progress, capture_rng, load_checkpoint
from mae.train.runtime import DistInfo, prepare, progress, seed_everything
from mae.train.schedule import lr_at

log = logging.getLogger(__name__)

PROBE_IMAGES = 512  # the fixed sample the tokenizer is measured on
PICTURE_IMAGES = 8


def temperature_at(progress_: float, start: float, end: float) -> float:
    """Exponential annealing: `start` at 0, `end` at 1 (the fraction of training done)."""
    return start * (end / start) ** min(max(progress_, 0.0), 1.0)


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Mean over grid positions of KL(softmax(logits) || uniform), logits (N, V, g, g)."""
    log_q = F.log_softmax(logits.float(), dim=1)
    return (log_q.exp() * log_q).sum(dim=1).mean() + math.log(logits.shape[1])


@torch.no_grad()
def measure(tokenizer: DiscreteVAE, images: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """Reconstruction error through hard tokens, codebook perplexity and share of codes used."""
    counts = torch.zeros(tokenizer.vocab, dtype=torch.float64)
    sq_error = 0.0
    for chunk in images.split(batch):
        ids = tokenizer.logits(chunk).argmax(dim=1)
        sq_error += F.mse_loss(tokenizer.decode(ids), chunk, reduction="sum").item()
        counts += torch.bincount(ids.flatten().cpu(), minlength=tokenizer.vocab).double()
    freq = counts / counts.sum()
    entropy = -(freq[freq > 0] * freq[freq > 0].log()).sum()
    return {
        "recon_mse": sq_error / images.numel(),
        "perplexity": float(entropy.exp()),
        "codes_used": float((counts > 0).double().mean()),
    }


def train_one_epoch(
    model: DiscreteVAE,
    optimizer: torch.optim.Optimizer,
    cfg: ExperimentConfig,
    dataset: Dataset,
    epoch: int,
) -> tuple[dict[str, float], int]:
    """One pass over the pre-training images: the means of the loss terms, lr and temperature,
    and the number of optimizer steps."""
    tcfg, device = cfg.tokenizer, model.codebook.device
    workers = cfg.runtime.num_workers
    loader = make_loader(dataset, tcfg.batch_size, True, tcfg.seed, epoch, workers, True)
    steps, start = len(loader), time.perf_counter()
    if steps == 0:
        raise ValueError(f"{len(dataset)} images make no full batch of {tcfg.batch_size}")
    sums = dict.fromkeys(("loss", "train_recon_mse", "kl", "lr", "temperature"), 0.0)
    bar = progress(loader, enabled=cfg.runtime.progress, desc=f"tokenizer {epoch + 1}", leave=False)
    for it, (images, _) in enumerate(bar):
        done = (epoch + it / steps) / tcfg.epochs
        lr = lr_at(
            epoch + it / steps,
            lr=tcfg.lr,
            min_lr=tcfg.min_lr,
            warmup_epochs=tcfg.warmup_epochs,
            epochs=tcfg.epochs,
        )
        tau = temperature_at(done, tcfg.temperature_start, tcfg.temperature_end)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = images.to(device, non_blocking=True)
        out = model(images, tau)
        recon, kl = F.mse_loss(out.recon, images), kl_to_uniform(out.logits)
        loss = recon + tcfg.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name, value in zip(sums, (loss.item(), recon.item(), kl.item(), lr, tau), strict=True):
            sums[name] += value
    if not math.isfinite(sums["loss"]):
        raise FloatingPointError(f"tokenizer loss is {sums['loss']} in epoch {epoch + 1}")
    means = {k: v / steps for k, v in sums.items()}
    return {**means, "epoch_time_s": time.perf_counter() - start}, steps


def report_epoch(
    logger: MetricLogger, stats: dict[str, float], done: int, cfg: ExperimentConfig
) -> None:
    logger.log_metrics({f"tokenizer/{k}": v for k, v in stats.items()}, step=done)
    log.info(
        "tokenizer epoch %d/%d  loss %.4f  recon %.4f  perplexity %.1f of %d codes",
        done,
        cfg.tokenizer.epochs,
        stats["loss"],
        stats["recon_mse"],
        stats["perplexity"],
        cfg.target.dvae_vocab,
    )


def summarise(history: list[dict[str, float]]) -> dict[str, float]:
    """The numbers a finished tokenizer reports (its last epoch's measurements)."""
    last = history[-1]
    return {
        "tokenizer/recon_mse": last["recon_mse"],
        "tokenizer/perplexity": last["perplexity"],
        "tokenizer/codes_used": last["codes_used"],
        "tokenizer/wall_time_s": sum(h["epoch_time_s"] for h in history),
        "tokenizer/epochs": float(len(history)),
    }


def train_tokenizer(
    cfg: ExperimentConfig,
    workdir: Path,
    logger: MetricLogger | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, float]:
    """Train (or resume, or just report) the in-project dVAE of `cfg` in `workdir`."""
    if cfg.tokenizer.kind != "dvae":
        raise ValueError(f"tokenizer.kind={cfg.tokenizer.kind} is not trained here")
    logger, workdir, tcfg = logger or NullLogger(), Path(workdir), cfg.tokenizer
    checkpointer = Checkpointer(workdir, "tokenizer", run_key(cfg, "tokenizer"), cfg)
    state = checkpointer.load() or Progress()
    if state.final is not None:
        log.info("tokenizer %s already finished in %s", checkpointer.key[:12], workdir)
        return state.final
    if stop_after_epoch is not None and state.epoch >= stop_after_epoch:
        return summarise(state.history)
    device = prepare(cfg.runtime)
    seed_everything(tcfg.seed)
    model = build_tokenizer(cfg).to(device)
    assert isinstance(model, DiscreteVAE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    dataset = pretrain_set(cfg)  # before an RNG restore: building may draw from the streams
    if state.epoch:
        checkpointer.restore(model, optimizer, DistInfo())
    probe = visualize.preview_images(cfg, PROBE_IMAGES).to(device)
    for epoch in range(state.epoch, tcfg.epochs):
        stats, steps = train_one_epoch(model, optimizer, cfg, dataset, epoch)
        stats.update(measure(model, probe))
        done = state.advance(stats, steps)
        report_epoch(logger, stats, done, cfg)
        if done == tcfg.epochs:
            state.final = summarise(state.history)
        if state.final or done == stop_after_epoch or done % cfg.runtime.checkpoint_every == 0:
            checkpointer.save(model, optimizer, state, [capture_rng()])
        if done == stop_after_epoch:
            return summarise(state.history)
    if cfg.runtime.recon_images:
        picture = workdir / RECONSTRUCTION
        visualize.token_grid(model, cfg, picture, min(cfg.runtime.recon_images, PICTURE_IMAGES))
        logger.log_artifact(picture)
    assert state.final is not None
    return state.final


def load_tokenizer(tokenizer: Tokenizer, cfg: ExperimentConfig, checkpoint: Path | None) -> None:
    """Give a dVAE target's tokenizer its weights: the DALL-E encoder's from `tokenizer.weights`,
    or the in-project dVAE's from the finished tokenizer run's `checkpoint`."""
    if isinstance(tokenizer, DalleTokenizer):
        info = dataset_info(cfg)
        tokenizer.load(cfg.tokenizer.weights, info.mean, info.std)
        return
    assert uses_tokenizer_stage(cfg)
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    key = run_key(cfg, "tokenizer")
    if state is None or state["key"] != key or state["final"] is None:
        raise FileNotFoundError(
            f"no finished tokenizer {key[:12]} at {checkpoint}: the dVAE target needs its "
            "tokenizer stage to run first"
        )
    tokenizer.load_state_dict(state["model"])
