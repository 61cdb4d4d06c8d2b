"""Procedural images for shape tests: any size and channel count, deterministic from a seed.

Class k is a pinwheel with k + 1 light/dark sector pairs around a jittered centre, with a random
rotation, per-channel colours and pixel noise. The class survives horizontal flips, crops that
keep the centre and rescaling, so the usual augmentations do not scramble the labels (as
orientation-coded gratings would under a flip). At 8 px, classes beyond a few sectors blur into
each other; use 16 px or more when accuracy on this set should mean something.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_CHUNK = 256  # images per vectorised step, to bound float memory at large sizes


def synthetic_images(
    n: int, image_size: int, channels: int, num_classes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """`n` images uint8 (n, channels, size, size) and balanced int64 labels, from `seed`."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes)
    centre = rng.uniform(-0.15, 0.15, size=(n, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=n)
    low = rng.uniform(0.0, 0.35, size=(n, channels))
    high = rng.uniform(0.65, 1.0, size=(n, channels))
    coords = (np.arange(image_size) + 0.5) / image_size - 0.5
    ys, xs = np.meshgrid(coords, coords, indexing="ij")

    out = np.empty((n, channels, image_size, image_size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        angle = np.arctan2(
            ys[None] - centre[sl, 1, None, None], xs[None] - centre[sl, 0, None, None]
        )
        sectors = (labels[sl] + 1)[:, None, None]
        pattern = 0.5 + 0.5 * np.sin(sectors * angle + phase[sl, None, None])
        lo, hi = low[sl, :, None, None], high[sl, :, None, None]
        image = lo + (hi - lo) * pattern[:, None]
        image += rng.normal(0.0, 0.04, size=image.shape)
        out[sl] = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64))
