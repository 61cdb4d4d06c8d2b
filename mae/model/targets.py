"""Reconstruction targets for Table 1(d): what the decoder predicts per patch, and the loss.

A target turns patchified pixels (N, L, p*p*C) into what the decoder must predict, says how wide
the prediction is (`out_dim`) and owns the loss, including its reduction over the masked or all
patches. The model only calls `target(patches)` and `target.loss(...)`, so a new kind drops in
here without touching `mae.py`:

- PCA coefficients: a `RegressionTarget` with `needs_fit = True`; `fit(patches)` stores the
  mean and top-k basis as buffers (so they travel in checkpoints), `__call__` projects.
- dVAE tokens: `out_dim` = vocabulary size, `__call__` returns (N, L) token ids and `loss` is
  the per-patch cross-entropy, reduced by the same `reduce_patches`.

Targets are `nn.Module`s so that fitted state is part of the model's state dict; pixel targets
have none, and leave the state dict unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from mae.config import UNAVAILABLE_TARGETS, TargetConfig

LossOn = Literal["masked", "all"]


class TargetUnavailable(NotImplementedError):
    """A target kind the suite knows of but cannot build yet (`mae.config.UNAVAILABLE_TARGETS`)."""


def reduce_patches(per_patch: torch.Tensor, mask: torch.Tensor, loss_on: LossOn) -> torch.Tensor:
    """(N, L) per-patch losses -> scalar: mean over masked patches (official) or over all."""
    if loss_on == "masked":
        return (per_patch * mask).sum() / mask.sum()
    if loss_on == "all":
        return per_patch.mean()
    raise ValueError(f"loss_on must be 'masked' or 'all', got {loss_on!r}")


class Target(nn.Module):
    """Base of every target. Trainers call `fit` once, before training, when `needs_fit`;
    pictures call `to_pixels` on targets that are `invertible`."""

    out_dim: int
    needs_fit: bool = False
    invertible: bool = False

    def fit(self, patches: torch.Tensor) -> None:
        """Learn whatever the target needs from (M, p*p*C) training patches; nothing by default."""

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, loss_on: LossOn
    ) -> torch.Tensor:
        raise NotImplementedError

    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Predictions (N, L, out_dim) back to patch pixels, given the true `patches`."""
        raise NotImplementedError(f"{type(self).__name__} predictions are not pixels")


class RegressionTarget(Target):
    """Targets regressed with the mean squared error of each patch, as the official loss."""

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, loss_on: LossOn
    ) -> torch.Tensor:
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        return reduce_patches(per_patch, mask, loss_on)


class PixelTarget(RegressionTarget):
    """Raw patch pixels (Table 1 default, 'w/o norm')."""

    invertible = True

    def __init__(self, patch_dim: int):
        super().__init__()
        self.out_dim = patch_dim

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return patches

    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return pred


class NormPixelTarget(RegressionTarget):
    """Pixels normalised per patch by their mean and unbiased variance (`--norm_pix_loss`)."""

    invertible = True

    def __init__(self, patch_dim: int, eps: float = 1e-6):
        super().__init__()
        self.out_dim = patch_dim
        self.eps = eps

    def _stats(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch's mean and standard deviation (unbiased variance + eps, as official)."""
        mean = patches.mean(dim=-1, keepdim=True)
        return mean, (patches.var(dim=-1, keepdim=True) + self.eps) ** 0.5

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(patches)
        return (patches - mean) / std

    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation with each true patch's own statistics, as the official
        visualisation notebook does."""
        mean, std = self._stats(patches)
        return pred * std + mean


TARGETS: dict[str, Callable[[TargetConfig, int], Target]] = {
    "pixel": lambda cfg, patch_dim: PixelTarget(patch_dim),
    "norm_pixel": lambda cfg, patch_dim: NormPixelTarget(patch_dim),
}


def build_target(target_cfg: TargetConfig, patch_size: int, channels: int) -> Target:
    """`cfg.target` -> a Target for patches of `patch_size`**2 * `channels` values."""
    kind = target_cfg.kind
    if kind in UNAVAILABLE_TARGETS:
        raise TargetUnavailable(UNAVAILABLE_TARGETS[kind])
    if kind not in TARGETS:
        raise ValueError(f"unknown target kind {kind!r}; allowed: {', '.join(TARGETS)}")
    return TARGETS[kind](target_cfg, patch_size**2 * channels)
