"""Reconstruction pictures: layout and size, what each column shows, norm-pixel de-normalisation
and drawing from a checkpoint alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mae.data import dataset_info
from mae.model import build_mae
from mae.train.checkpoint import save_checkpoint
from mae.train.visualize import (
    preview_images,
    reconstruct,
    reconstruction_from_checkpoint,
    reconstruction_grid,
)


def _cell(png: np.ndarray, row: int, col: int) -> np.ndarray:
    """The drawn (96, 96, 3) image at (row, col): 8-pixel digits upscaled 12x, 2-pixel gaps,
    a 14-pixel title strip."""
    top, left = 14 + 2 + row * 98, 2 + col * 98
    return png[top : top + 96, left : left + 96]


def test_grid_has_four_columns_showing_original_masked_recon_and_paste(micro, tmp_path):
    cfg = micro()
    torch.manual_seed(0)
    model = build_mae(cfg)
    info = dataset_info(cfg)
    images = preview_images(cfg, 3)
    path = reconstruction_grid(model, images, tmp_path / "r.png", mean=info.mean, std=info.std)

    picture = Image.open(path)
    assert picture.size == (4 * 96 + 5 * 2, 14 + 3 * 96 + 4 * 2) == (394, 310)
    png = np.asarray(picture.convert("RGB")).astype(int)

    _, _, mask = reconstruct(model, images, seed=0)  # the mask the picture used (seed 0)
    mean, std = info.mean[0], info.std[0]
    for row in range(3):
        original = ((images[row, 0] * std + mean).clamp(0, 1) * 255).round().int().numpy()
        big = np.kron(original, np.ones((12, 12), dtype=int))
        hidden = np.kron(mask[row, 0].numpy(), np.ones((12, 12))) == 1
        assert hidden.mean() == pytest.approx(0.75)  # 12 of 16 patches
        assert np.array_equal(_cell(png, row, 0)[..., 0], big)
        masked = _cell(png, row, 1)[..., 0]
        assert np.all(masked[hidden] == 128) and np.array_equal(masked[~hidden], big[~hidden])
        pasted, recon = _cell(png, row, 3)[..., 0], _cell(png, row, 2)[..., 0]
        assert np.array_equal(pasted[~hidden], big[~hidden])
        assert np.array_equal(pasted[hidden], recon[hidden])


@pytest.mark.parametrize("kind", ["pixel", "norm_pixel"])
def test_a_perfect_prediction_reconstructs_the_image(micro, kind):
    """Feed the decoder's output slot the exact target: the drawn reconstruction must be the
    input, which for norm_pixel needs each patch's own mean and variance put back."""
    cfg = micro(**{"target.kind": kind})
    model = build_mae(cfg)
    images = preview_images(cfg, 4)
    model.forward_decoder = lambda latent, ids_restore: model.target(model.patchify(images))
    recon, pasted, _ = reconstruct(model, images)
    assert torch.allclose(recon, images, atol=1e-4)
    assert torch.allclose(pasted, images, atol=1e-4)


def test_picture_from_a_checkpoint_alone(micro, tmp_path):
    cfg = micro(**{"target.kind": "norm_pixel"})
    torch.manual_seed(0)
    model = build_mae(cfg)
    save_checkpoint(
        tmp_path / "checkpoint.pt", {"model": model.state_dict(), "config": cfg.model_dump_json()}
    )
    out = reconstruction_from_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "pic.png", n=2)
    assert Image.open(out).size == (394, 14 + 2 * 96 + 3 * 2)
    twice = reconstruction_grid(
        model,
        preview_images(cfg, 2),
        tmp_path / "again.png",
        mean=dataset_info(cfg).mean,
        std=dataset_info(cfg).std,
    )
    assert out.read_bytes() == twice.read_bytes()  # same weights, same seed: same picture
