"""Reconstruction pictures as in the paper's Figs. 2-3, for a model in memory or any checkpoint.

Each row shows one image four ways: original | masked (masked patches grey) | reconstruction |
reconstruction with the visible patches pasted back. The model's target brings its predictions back
to pixels (`Target.to_pixels`); everything is then de-normalised with the data set's mean/std and
drawn, upscaled without smoothing so that patches stay sharp. A tokenizer's picture has two
columns: original | decoded from its tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from mae.config import ExperimentConfig, validate_config
from mae.data import dataset_info, pretrain_set
from mae.model import MaskedAutoencoder, Tokenizer, build_mae
from mae.overrides import apply_overrides
from mae.train.checkpoint import load_checkpoint

COLUMNS = ("original", "masked", "recon", "recon+visible")
MIN_CELL = 96  # small images are upscaled by a whole factor to at least this many pixels
GAP = 2
HEADER = 14
MASK_GREY = 0.5


def cell_size(side: int) -> int:
    """Pixels per drawn image: the smallest whole multiple of `side` reaching MIN_CELL."""
    return side * max(1, -(-MIN_CELL // side))


def grid_size(n: int, side: int, columns: int = len(COLUMNS)) -> tuple[int, int]:
    """(width, height) of the PNG for `n` rows of `columns` images of `side` pixels."""
    cell = cell_size(side)
    return columns * cell + (columns + 1) * GAP, HEADER + n * cell + (n + 1) * GAP


def can_draw(model: MaskedAutoencoder) -> bool:
    """Whether the model's predictions can be brought back to pixels and drawn."""
    return model.target.invertible


@torch.no_grad()
def reconstruct(
    model: MaskedAutoencoder, images: Tensor, mask_ratio: float | None = None, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """(reconstruction, pasted, mask) as images in the input's normalised space; mask 1 = masked.

    The mask is drawn from its own generator seeded with `seed`, so a training run's RNG streams
    are untouched and the same checkpoint always gives the same picture.
    """
    if not can_draw(model):
        raise ValueError(f"cannot draw predictions of a {type(model.target).__name__}")
    device = next(model.parameters()).device
    images = images.to(device)
    was_training = model.training
    model.eval()
    out = model(images, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(seed))
    model.train(was_training)

    pred = model.target.to_pixels(out.pred.float(), model.patchify(images))
    recon = model.unpatchify(pred)
    patch_dim = pred.shape[-1]
    mask = model.unpatchify(out.mask.float().unsqueeze(-1).expand(-1, -1, patch_dim))
    return recon, images * (1 - mask) + recon * mask, mask


def _to_display(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Normalised (N, C, H, W) -> values in [0, 1]."""
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x * s + m
    return x.clamp(0, 1)


def _to_pil(x: Tensor, cell: int) -> Image.Image:
    """One (C, H, W) image in [0, 1] -> an RGB picture `cell` pixels wide, nearest-upscaled."""
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    arr = (x[:3] * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB").resize((cell, cell), Image.Resampling.NEAREST)


def draw_columns(columns: Sequence[Tensor], titles: Sequence[str], path: Path) -> Path:
    """A PNG with one titled column per batch of (N, C, H, W) images in [0, 1], row by row."""
    n, side = columns[0].shape[0], columns[0].shape[-1]
    cell = cell_size(side)
    canvas = Image.new("RGB", grid_size(n, side, len(columns)), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(titles):
        draw.text((GAP + col * (cell + GAP) + 2, 1), title, fill="black")
    for row in range(n):
        for col, batch in enumerate(columns):
            xy = (GAP + col * (cell + GAP), HEADER + GAP + row * (cell + GAP))
            canvas.paste(_to_pil(batch[row], cell), xy)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def reconstruction_grid(
    model: MaskedAutoencoder,
    images: Tensor,
    path: Path,
    mask_ratio: float | None = None,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Write the four-column grid for normalised `images` (N, C, H, W) to `path` (PNG).

    `mean`/`std` are the data set's normalisation; None draws the images as they are.
    """
    recon, pasted, mask = reconstruct(model, images, mask_ratio, seed)
    originals = _to_display(images.to(mask.device), mean, std)
    masked = originals * (1 - mask) + MASK_GREY * mask
    columns = [originals, masked, _to_display(recon, mean, std), _to_display(pasted, mean, std)]
    return draw_columns(columns, COLUMNS, path)


@torch.no_grad()
def token_grid(tokenizer: Tokenizer, cfg: ExperimentConfig, path: Path, n: int) -> Path:
    """`n` preview images of `cfg`'s data beside their reconstruction from the tokenizer's
    tokens (the most likely code of each patch, decoded)."""
    info = dataset_info(cfg)
    images = preview_images(cfg, n).to(next(tokenizer.parameters()).device)
    decoded = tokenizer.decode(tokenizer.logits(images).argmax(dim=1))
    columns = [_to_display(x.float(), info.mean, info.std) for x in (images, decoded)]
    return draw_columns(columns, ("original", "from tokens"), path)


def preview_images(cfg: ExperimentConfig, n: int) -> Tensor:
    """The first `n` pre-training images without augmentation: the same pictures every time."""
    plain = validate_config(
        apply_overrides(cfg.model_dump(mode="json"), {"data.augmentation": "none"})
    )
    dataset = pretrain_set(plain)
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])


def render_for_config(
    model: MaskedAutoencoder, cfg: ExperimentConfig, path: Path, n: int, seed: int = 0
) -> Path:
    """The grid for `n` preview images of `cfg`'s data, at `cfg`'s mask ratio."""
    info = dataset_info(cfg)
    return reconstruction_grid(
        model, preview_images(cfg, n), path, seed=seed, mean=info.mean, std=info.std
    )


def reconstruction_from_checkpoint(checkpoint_path: Path, out_path: Path, n: int = 8) -> Path:
    """Rebuild model and data from a pre-training checkpoint's stored config and draw the grid."""
    state = load_checkpoint(Path(checkpoint_path))
    if state is None:
        raise FileNotFoundError(f"no checkpoint at {checkpoint_path}")
    cfg = validate_config(json.loads(state["config"]), source=str(checkpoint_path))
    model = build_mae(cfg)
    model.load_state_dict(state["model"])
    return render_for_config(model, cfg, Path(out_path), n)
