"""Images <-> patches in the one order every part of the model agrees on (the official code's):
patch (i, j) of the grid is row i * grid_w + j, its pixels in (row, col, channel) order."""

from __future__ import annotations

import math

import torch


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C)."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    x: torch.Tensor, p: int, c: int, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, H, W), the inverse of `patchify`; `grid` defaults to square."""
    if grid is None:
        side = math.isqrt(x.shape[1])
        grid = (side, side)
    gh, gw = grid
    x = x.reshape(x.shape[0], gh, gw, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(x.shape[0], c, gh * p, gw * p)
