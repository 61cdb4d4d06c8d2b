"""Reconstruction targets: the official formulas, the masked/all reductions, the PCA basis and
the dVAE tokens (one per patch, in `patchify`'s order)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from mae.config import TargetConfig
from mae.model import build_mae
from mae.model.patches import patchify
from mae.model.targets import (
    NormPixelTarget,
    PCATarget,
    PixelTarget,
    TokenTarget,
    build_target,
    reduce_patches,
)
from mae.model.tokenizer import DiscreteVAE


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
    pca = build_target(TargetConfig(kind="pca", pca_components=5), patch_size=4, channels=1)
    tokens = build_target(
        TargetConfig(kind="dvae"), patch_size=4, channels=1, tokenizer=DiscreteVAE(1, 4, 32, 8)
    )
    assert isinstance(pixel, PixelTarget) and pixel.out_dim == 48
    assert isinstance(norm, NormPixelTarget) and norm.out_dim == 4
    assert isinstance(pca, PCATarget) and pca.out_dim == 5 and pca.needs_fit and pca.invertible
    assert isinstance(tokens, TokenTarget) and tokens.out_dim == 32 and not tokens.needs_fit
    assert not pixel.needs_fit and not list(pixel.state_dict())
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_target(TargetConfig(kind="dvae"), patch_size=4, channels=1)


# ----------------------------------------------------------------------------- PCA


def _correlated_patches(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Patches whose variance falls off across directions, like image patches do."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g) * torch.logspace(0, -2, dim).unsqueeze(1)
    return torch.randn(n, dim, generator=g) @ mixing + torch.randn(dim, generator=g)


def test_pca_basis_is_orthonormal_and_explains_what_scikit_learn_says() -> None:
    patches = _correlated_patches(2000, 16)
    target = PCATarget(16, k=4)
    target.fit(patches)
    basis = target.basis.double()
    torch.testing.assert_close(
        basis.T @ basis, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0
    )
    reference = PCA(n_components=4).fit(patches.double().numpy())
    assert float(target.explained) == pytest.approx(
        reference.explained_variance_ratio_.sum(), rel=1e-6
    )
    # the same directions as scikit-learn's components, up to sign
    overlap = np.abs(reference.components_ @ basis.numpy())
    np.testing.assert_allclose(overlap, np.eye(4), atol=1e-5)
    torch.testing.assert_close(target.mean.double(), patches.double().mean(0), atol=1e-5, rtol=0)
    assert target.summary() == {"pca_explained_variance": pytest.approx(float(target.explained))}
    chunked = PCATarget(16, k=4)
    chunked.fit(patches, chunk=128)  # the sums over a large sample run in chunks
    torch.testing.assert_close(chunked.basis, target.basis, atol=1e-5, rtol=0)


def test_pca_with_every_component_reconstructs_exactly() -> None:
    patches = _correlated_patches(500, 12)
    target = PCATarget(12, k=12)
    target.fit(patches)
    assert float(target.explained) == pytest.approx(1.0)
    coefficients = target(patches.unsqueeze(0))
    assert coefficients.shape == (1, 500, 12)
    torch.testing.assert_close(target.to_pixels(coefficients, patches), patches.unsqueeze(0))


def test_pca_keeps_the_largest_components_and_refuses_to_run_unfitted() -> None:
    target = PCATarget(16, k=3)
    with pytest.raises(RuntimeError, match="before fit"):
        target(torch.zeros(1, 2, 16))
    patches = _correlated_patches(1000, 16)
    target.fit(patches)
    variances = target(patches).var(dim=0)
    assert (variances[:-1] >= variances[1:]).all()  # largest first
    with pytest.raises(ValueError, match="1 to 16"):
        PCATarget(16, k=17)
    state = target.state_dict()
    assert set(state) == {"mean", "basis", "explained", "fitted"}


# ----------------------------------------------------------------------------- dVAE tokens


def test_tokens_are_one_in_range_integer_per_patch_in_patchify_order() -> None:
    torch.manual_seed(0)
    tokenizer = DiscreteVAE(channels=1, patch_size=4, vocab=32, hidden=8)
    target = TokenTarget(tokenizer, patch_size=4, channels=1)
    images = torch.randn(3, 1, 12, 12)  # a 3x3 grid of 4x4 patches
    tokens = target(patchify(images, 4))
    assert tokens.shape == (3, 9) and tokens.dtype == torch.int64
    assert tokens.min() >= 0 and tokens.max() < 32
    assert torch.equal(tokens, tokenizer.logits(images).argmax(1).flatten(1))
    # The encoder reads each patch and a one-pixel halo: changing the inside of patch (row 1,
    # col 2) changes the logits of token 1 * 3 + 2 and of no other.
    changed = images.clone()
    changed[:, :, 5:7, 9:11] += 5.0
    moved = (tokenizer.logits(changed) - tokenizer.logits(images)).abs().amax(dim=(0, 1))
    assert moved.flatten().nonzero().flatten().tolist() == [5]


def test_token_target_loss_is_cross_entropy_over_the_masked_patches() -> None:
    target = TokenTarget(DiscreteVAE(1, 2, 16, 8), patch_size=2, channels=1)
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 4, 16, generator=g)
    tokens = torch.randint(0, 16, (2, 4), generator=g)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 1]])
    per_patch = F.cross_entropy(pred.flatten(0, 1), tokens.flatten(), reduction="none")
    want = per_patch[mask.flatten().bool()].mean()
    torch.testing.assert_close(target.loss(pred, tokens, mask, "masked"), want)
    torch.testing.assert_close(target.loss(pred, tokens, mask, "all"), per_patch.mean())


def test_a_dvae_target_mae_predicts_logits_and_keeps_its_tokenizer_frozen(micro) -> None:
    model = build_mae(micro(**{"target.kind": "dvae"}))
    vocab = model.target.out_dim
    out = model(torch.randn(4, 1, 8, 8))
    assert out.pred.shape == (4, 16, vocab) and torch.isfinite(out.loss)
    out.loss.backward()
    tokenizer = model.target.tokenizer
    assert all(p.grad is None and not p.requires_grad for p in tokenizer.parameters())
    assert "target.tokenizer.codebook" in model.state_dict()
    assert model.target.invertible  # the in-project dVAE decodes tokens for pictures
    pixels = model.target.to_pixels(out.pred, model.patchify(torch.zeros(4, 1, 8, 8)))
    assert pixels.shape == (4, 16, 4)
