"""Reconstruction targets for Table 1(d): what the decoder predicts per patch, and the loss.

A target turns patchified pixels (N, L, p*p*C) into what the decoder must predict, says how wide
the prediction is (`out_dim`) and owns the loss, including its reduction over the masked or all
patches. The model only calls `target(patches)` and `target.loss(...)`, so every kind drops in
here without touching `mae.py`:

- pixels, and pixels normalised per patch (`--norm_pix_loss`);
- PCA coefficients: `needs_fit`; `fit(patches)` stores the mean, the top-k basis and the variance
  it explains as buffers (so they travel in checkpoints), `__call__` projects, and pictures
  render coefficients back through the basis;
- dVAE tokens: `out_dim` = the tokenizer's vocabulary, `__call__` gives (N, L) token ids and the
  loss is the per-patch cross-entropy of the decoder's logits. The tokenizer is frozen inside the
  target, so it too travels in checkpoints.

Targets are `nn.Module`s so that fitted state is part of the model's state dict; pixel targets
have none, and leave the state dict unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mae.config import TargetConfig
from mae.model.patches import patchify, unpatchify
from mae.model.tokenizer import Tokenizer

LossOn = Literal["masked", "all"]


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

    def summary(self) -> dict[str, float]:
        """Numbers that describe the fitted target, logged with the pre-training."""
        return {}

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


class PCATarget(RegressionTarget):
    """The coefficients of the `k` largest principal components of training patches (the paper
    keeps 96 of 768). `fit` runs once, before training; the basis is then fixed."""

    needs_fit = True
    invertible = True

    def __init__(self, patch_dim: int, k: int):
        super().__init__()
        if not 1 <= k <= patch_dim:
            raise ValueError(f"PCA keeps 1 to {patch_dim} components, not {k}")
        self.out_dim = k
        self.register_buffer("mean", torch.zeros(patch_dim))
        self.register_buffer("basis", torch.zeros(patch_dim, k))  # orthonormal columns
        self.register_buffer("explained", torch.zeros(()))  # share of the variance kept
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, chunk: int = 1 << 16) -> None:
        """Principal components of (M, D) patches: the eigenvectors of their covariance, largest
        first, each signed so that its largest entry is positive. Sums run in float64 over
        chunks of the sample, so a large one needs no float64 copy of itself."""
        x = patches.detach().cpu().flatten(0, -2)
        mean = sum(c.double().sum(dim=0) for c in x.split(chunk)) / x.shape[0]
        cov = sum((c.double() - mean).T @ (c.double() - mean) for c in x.split(chunk))
        values, vectors = torch.linalg.eigh(cov / (x.shape[0] - 1))  # ascending
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        top = vectors[:, : self.out_dim]
        signs = torch.sign(top.gather(0, top.abs().argmax(dim=0, keepdim=True)))
        self.mean.copy_(mean)
        self.basis.copy_(top * signs)
        self.explained.copy_(values[: self.out_dim].sum() / values.sum())
        self.fitted.fill_(True)

    def summary(self) -> dict[str, float]:
        return {"pca_explained_variance": float(self.explained)}

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("the PCA target is used before fit(): no basis yet")
        with torch.autocast(patches.device.type, enabled=False):
            return (patches.float() - self.mean) @ self.basis

    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return pred.float() @ self.basis.T + self.mean


class TokenTarget(Target):
    """dVAE tokens: each patch's token id; the decoder predicts logits over the vocabulary and is
    trained with cross-entropy. The tokenizer is frozen and computes in float32 (no autocast)."""

    def __init__(self, tokenizer: Tokenizer, patch_size: int, channels: int):
        super().__init__()
        self.tokenizer = tokenizer.requires_grad_(False)
        self.patch_size, self.channels = patch_size, channels
        self.out_dim = tokenizer.vocab
        self.invertible = tokenizer.can_decode

    @torch.no_grad()
    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        images = unpatchify(patches.float(), self.patch_size, self.channels)
        with torch.autocast(images.device.type, enabled=False):
            return self.tokenizer.tokens(images)

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, loss_on: LossOn
    ) -> torch.Tensor:
        per_patch = F.cross_entropy(pred.float().flatten(0, 1), target.flatten(), reduction="none")
        return reduce_patches(per_patch.view_as(mask), mask, loss_on)

    @torch.no_grad()
    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """The most likely token of each patch, decoded by the tokenizer's decoder."""
        grid = int(pred.shape[1] ** 0.5)
        ids = pred.argmax(dim=-1).view(-1, grid, grid)
        return patchify(self.tokenizer.decode(ids).float(), self.patch_size)


Builder = Callable[[TargetConfig, int, int, Tokenizer | None], Target]
TARGETS: dict[str, Builder] = {
    "pixel": lambda cfg, p, c, tokenizer: PixelTarget(p * p * c),
    "norm_pixel": lambda cfg, p, c, tokenizer: NormPixelTarget(p * p * c),
    "pca": lambda cfg, p, c, tokenizer: PCATarget(p * p * c, cfg.pca_components),
    "dvae": lambda cfg, p, c, tokenizer: TokenTarget(_given(tokenizer), p, c),
}


def _given(tokenizer: Tokenizer | None) -> Tokenizer:
    if tokenizer is None:
        raise ValueError("the dvae target needs a tokenizer (mae.model.tokenizer.build_tokenizer)")
    return tokenizer


def build_target(
    target_cfg: TargetConfig, patch_size: int, channels: int, tokenizer: Tokenizer | None = None
) -> Target:
    """`cfg.target` -> a Target for patches of `patch_size`**2 * `channels` values; the dvae
    kind reads the tokens of `tokenizer`."""
    kind = target_cfg.kind
    if kind not in TARGETS:
        raise ValueError(f"unknown target kind {kind!r}; allowed: {', '.join(TARGETS)}")
    return TARGETS[kind](target_cfg, patch_size, channels, tokenizer)
