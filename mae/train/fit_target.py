"""What a pre-training does once, before its first step, so that its target is fixed from then on:
fit the PCA basis on a sample of pre-training patches, or load the dVAE target's tokenizer.

Both land in the model's state dict (buffers, frozen weights), so a resumed run takes them from its
checkpoint and never fits or loads again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mae.config import ExperimentConfig
from mae.data import pretrain_set
from mae.model import MaskedAutoencoder
from mae.model.targets import TokenTarget
from mae.train.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

# The PCA basis is fitted on the patches of this many pre-training images (all of them when the
# split is smaller): a bounded sample, so that a paper-scale run reads ~2k images, not 1.28M.
PCA_FIT_IMAGES = 2048


def sample_patches(cfg: ExperimentConfig, model: MaskedAutoencoder) -> torch.Tensor:
    """(M, p*p*C) patches of a fixed sample of pre-training images, augmented as in training.

    Which images and their augmentation follow `pretrain.seed` alone, on a forked RNG: every
    process draws the same sample, and the run's own random streams are left untouched.
    """
    dataset = pretrain_set(cfg)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.pretrain.seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.pretrain.seed)
        images = torch.stack([dataset[int(i)][0] for i in order[:PCA_FIT_IMAGES]])
    return model.patchify(images).flatten(0, 1)


def fit_target(
    model: MaskedAutoencoder, cfg: ExperimentConfig, tokenizer_checkpoint: Path | None = None
) -> dict[str, float]:
    """Prepare `model.target` for training; returns the numbers describing it (`summary`)."""
    target = model.target
    if isinstance(target, TokenTarget):
        load_tokenizer(target.tokenizer, cfg, tokenizer_checkpoint)
    if target.needs_fit:
        target.fit(sample_patches(cfg, model))
    numbers = target.summary()
    if numbers:
        log.info("target %s fitted: %s", cfg.target.kind, numbers)
    return numbers
