"""Reconstruction targets: the official formulas, the masked/all reductions, unavailable kinds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mae.config import UNAVAILABLE_TARGETS, TargetConfig
from mae.model import MaskedAutoencoder
from mae.model.targets import (
    LossOn,
    NormPixelTarget,
    PixelTarget,
    RegressionTarget,
    Target,
    TargetUnavailable,
    build_target,
    reduce_patches,
)


def test_norm_pixel_matches_the_formula_by_hand() -> None:
    patches = torch.rand(2, 3, 12, dtype=torch.float64) * 4 - 1
    got = NormPixelTarget(12)(patches)
    for n in range(2):
        for i in range(3):
            values = patches[n, i].tolist()
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)  # unbiased
            want = [(v - mean) / math.sqrt(var + 1e-6) for v in values]
            assert got[n, i].tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_norm_pixel_keeps_flat_patches_finite() -> None:
    out = NormPixelTarget(4)(torch.full((1, 2, 4), 0.3))
    assert torch.equal(out, torch.zeros(1, 2, 4))


def test_pixel_target_is_the_patches() -> None:
    patches = torch.randn(2, 5, 16)
    assert PixelTarget(16)(patches) is patches


def _loss_setup() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 6, 4, generator=g)
    target = torch.randn(2, 6, 4, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    return pred, target, mask


def test_masked_loss_is_mean_mse_over_masked_patches() -> None:
    pred, target, mask = _loss_setup()
    per_patch = ((pred - target) ** 2).mean(-1)
    want = per_patch[mask.bool()].mean()
    got = PixelTarget(4).loss(pred, target, mask, "masked")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(PixelTarget(4).loss(pred, target, mask, "all"), per_patch.mean())


def test_visible_patch_predictions_only_count_with_loss_on_all() -> None:
    pred, target, mask = _loss_setup()
    tgt = PixelTarget(4)
    changed = pred.clone()
    changed[0, 1] += 10.0  # mask[0, 1] == 0: a visible patch
    assert tgt.loss(changed, target, mask, "masked") == tgt.loss(pred, target, mask, "masked")
    assert tgt.loss(changed, target, mask, "all") > tgt.loss(pred, target, mask, "all")
    changed = pred.clone()
    changed[0, 0] += 10.0  # a masked patch counts either way
    assert tgt.loss(changed, target, mask, "masked") > tgt.loss(pred, target, mask, "masked")


def test_reduce_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="loss_on"):
        reduce_patches(torch.ones(1, 2), torch.ones(1, 2), "visible")  # type: ignore[arg-type]


def test_build_target_kinds_and_width() -> None:
    pixel = build_target(TargetConfig(kind="pixel"), patch_size=4, channels=3)
    norm = build_target(TargetConfig(kind="norm_pixel"), patch_size=2, channels=1)
    assert isinstance(pixel, PixelTarget) and pixel.out_dim == 48
    assert isinstance(norm, NormPixelTarget) and norm.out_dim == 4
    assert not pixel.needs_fit and not list(pixel.state_dict())


@pytest.mark.parametrize("kind", sorted(UNAVAILABLE_TARGETS))
def test_unavailable_kinds_raise_with_their_reason(kind: str) -> None:
    with pytest.raises(TargetUnavailable) as info:
        build_target(TargetConfig(kind=kind), patch_size=4, channels=1)
    assert str(info.value) == UNAVAILABLE_TARGETS[kind]
    assert isinstance(info.value, NotImplementedError)


# ----------------------------------------------------------------------------- drop-in kinds
# PCA and dVAE targets arrive later; these stand-ins show they need no change to mae.py.


class TokenTarget(Target):
    """dVAE-like: a fixed 'tokenizer' maps each patch to one of `vocab` ids; loss = CE."""

    def __init__(self, patch_dim: int, vocab: int):
        super().__init__()
        self.out_dim = vocab
        self.tokenizer = nn.Linear(patch_dim, vocab)
        nn.init.constant_(self.tokenizer.weight, 0.5)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.tokenizer(patches).argmax(-1)

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, loss_on: LossOn
    ) -> torch.Tensor:
        per_patch = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none")
        return reduce_patches(per_patch.view_as(mask), mask, loss_on)


class PCATarget(RegressionTarget):
    """PCA-like: `fit` learns a mean and the top-k basis, kept as buffers (so in checkpoints)."""

    needs_fit = True

    def __init__(self, patch_dim: int, k: int):
        super().__init__()
        self.out_dim = k
        self.register_buffer("mean", torch.zeros(patch_dim))
        self.register_buffer("basis", torch.zeros(patch_dim, k))

    def fit(self, patches: torch.Tensor) -> None:
        self.mean.copy_(patches.mean(0))
        _, _, v = torch.linalg.svd(patches - self.mean, full_matrices=False)
        self.basis.copy_(v[: self.out_dim].T)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return (patches - self.mean) @ self.basis


def _tiny_mae(target: Target) -> MaskedAutoencoder:
    return MaskedAutoencoder(
        img_size=8,
        patch_size=2,
        in_chans=1,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        target=target,
    )


def test_a_cross_entropy_token_target_drops_in() -> None:
    model = _tiny_mae(TokenTarget(4, vocab=7))
    assert (model.target.tokenizer.weight == 0.5).all()  # model init leaves target weights
    out = model(torch.randn(3, 1, 8, 8))
    assert out.pred.shape == (3, 16, 7) and torch.isfinite(out.loss) and out.loss > 0
    assert "target.tokenizer.weight" in model.state_dict()


def test_a_fitted_pca_target_drops_in() -> None:
    target = PCATarget(4, k=2)
    model = _tiny_mae(target)
    images = torch.randn(16, 1, 8, 8)
    if target.needs_fit:
        target.fit(model.patchify(images).flatten(0, 1))
    assert torch.allclose(target.basis.T @ target.basis, torch.eye(2), atol=1e-5)
    out = model(images)
    assert out.pred.shape == (16, 16, 2) and torch.isfinite(out.loss)
    assert torch.equal(model.state_dict()["target.basis"], target.basis)
