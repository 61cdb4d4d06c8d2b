"""Mask samplers for Table 1(f): random (the MAE default), block-wise (BEiT) and grid.

Every sampler returns the same three tensors as the official `random_masking`, with the kept
patches first in `ids_shuffle`, so the model never needs to know which sampler made them:
`ids_keep` (N, len_keep) gathers the visible patches, `ids_restore` (N, L) undoes the shuffle and
`mask` (N, L) is 1 where a patch is hidden. All samplers keep exactly `num_keep(L, ratio)`
patches, so batches stay rectangular and the ablation compares equal encoder work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch


class Masking(NamedTuple):
    ids_keep: torch.Tensor  # (N, len_keep) int64
    ids_restore: torch.Tensor  # (N, L) int64
    mask: torch.Tensor  # (N, L) float, 1 = masked


class Sampler(Protocol):
    def __call__(
        self,
        batch: int,
        grid_h: int,
        grid_w: int,
        ratio: float,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> Masking: ...


def num_keep(num_patches: int, ratio: float) -> int:
    """Visible patches per image, exactly as the official code counts them."""
    return int(num_patches * (1 - ratio))


def uniform(
    shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None
) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (so a CPU generator can seed a GPU run)."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def masking_from_mask(mask: torch.Tensor) -> Masking:
    """(N, L) bool mask with the same count per row -> kept (raster order) first, then masked."""
    ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    len_keep = mask.shape[1] - int(mask[0].sum())
    return Masking(ids_shuffle[:, :len_keep], ids_restore, mask.float())


@dataclass(frozen=True)
class RandomSampler:
    """The official per-sample shuffle: argsort of uniform noise, small noise = keep."""

    def __call__(
        self,
        batch: int,
        grid_h: int,
        grid_w: int,
        ratio: float,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> Masking:
        length = grid_h * grid_w
        len_keep = num_keep(length, ratio)
        ids_shuffle = torch.argsort(uniform((batch, length), device, generator), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(batch, length, device=device)
        mask[:, :len_keep] = 0
        return Masking(ids_shuffle[:, :len_keep], ids_restore, torch.gather(mask, 1, ids_restore))


@dataclass(frozen=True)
class BlockSampler:
    """BEiT's block-wise masking, drawn for the whole batch at once.

    Each round proposes one rectangle per image (area uniform in [min_area, remaining], log-aspect
    uniform in [log a, -log a]) and accepts it when it adds at least one and at most the remaining
    number of patches, as BEiT's `MaskingGenerator` does. Acceptance never overshoots, so no trim
    is needed; images still short after `max_rounds` (or whose remainder no rectangle fits) are
    filled with the unmasked patches that touch the most masked ones, which keeps blocks compact.
    `min_area` None scales BEiT's 16 patches on a 14x14 grid to the grid, at least 4.
    """

    min_aspect: float = 0.3
    min_area: int | None = None
    max_rounds: int = 64

    def __call__(
        self,
        batch: int,
        grid_h: int,
        grid_w: int,
        ratio: float,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> Masking:
        length = grid_h * grid_w
        target = length - num_keep(length, ratio)
        min_area = self.min_area or max(4, round(16 * length / 196))
        log_lo, log_hi = math.log(self.min_aspect), -math.log(self.min_aspect)
        rows = torch.arange(grid_h, device=device).view(1, grid_h, 1)
        cols = torch.arange(grid_w, device=device).view(1, 1, grid_w)
        mask = torch.zeros(batch, grid_h, grid_w, dtype=torch.bool, device=device)
        count = torch.zeros(batch, dtype=torch.long, device=device)
        for _ in range(self.max_rounds):
            remaining = target - count
            if not bool((remaining > 0).any()):
                break
            u = uniform((4, batch), device, generator)
            area = min_area + u[0] * (remaining.clamp(min=min_area) - min_area)
            aspect = torch.exp(log_lo + u[1] * (log_hi - log_lo))
            h = torch.sqrt(area * aspect).round().long().clamp(min=1)
            w = torch.sqrt(area / aspect).round().long().clamp(min=1)
            top = (u[2] * (grid_h - h + 1).clamp(min=1)).long()
            left = (u[3] * (grid_w - w + 1).clamp(min=1)).long()
            top, left, bottom, right = (t.view(batch, 1, 1) for t in (top, left, top + h, left + w))
            rect = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
            added = (rect & ~mask).sum((1, 2))
            ok = (h <= grid_h) & (w <= grid_w) & (added > 0) & (added <= remaining)
            mask |= rect & ok.view(batch, 1, 1)
            count += added * ok
        mask = fill_next_to_mask(mask, target - count, generator)
        return masking_from_mask(mask.flatten(1))


def fill_next_to_mask(
    mask: torch.Tensor, missing: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Mask `missing[n]` more patches of image n, preferring those with most masked 4-neighbours."""
    if not bool((missing > 0).any()):
        return mask
    padded = torch.nn.functional.pad(mask.float(), (1, 1, 1, 1))
    touching = (
        padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    )
    score = touching + 0.5 * uniform(tuple(mask.shape), mask.device, generator)
    score = score.masked_fill(mask, -1.0).flatten(1)
    rank = torch.argsort(torch.argsort(score, dim=1, descending=True), dim=1)
    return mask | (rank < missing.view(-1, 1)).view_as(mask)


@dataclass(frozen=True)
class GridSampler:
    """Keep one patch of every 2x2 cell, at `offset` (row, col) inside the cell; ratio is 0.75.

    Odd grid sides (7x7 from 28 px / patch 4): the cells on the bottom and right edge are cut in
    half, and keeping the top-left patch of every cell, cut ones included, keeps
    ceil(h/2)*ceil(w/2) patches, more than int(L/4). The surplus is dropped from the kept patches
    of the cut edge cells, evenly spaced along the edge (walked down the right column, then left
    along the bottom row), so the interior keeps the exact 1-in-4 pattern and the count is
    exactly `num_keep(L, 0.75)` (12 of 49 on 7x7). An odd side needs offset 0 on that axis.
    """

    offset: tuple[int, int] = (0, 0)

    def __call__(
        self,
        batch: int,
        grid_h: int,
        grid_w: int,
        ratio: float,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> Masking:
        if abs(ratio - 0.75) > 1e-9:
            raise ValueError(
                f"grid masking keeps 1 of every 4 patches: ratio must be 0.75, got {ratio}"
            )
        keep = grid_keep(grid_h, grid_w, self.offset).to(device)
        return masking_from_mask((~keep).flatten().expand(batch, -1))


def grid_keep(grid_h: int, grid_w: int, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(grid_h, grid_w) bool, True = kept, for the grid sampler (see `GridSampler`)."""
    oy, ox = offset
    if oy not in (0, 1) or ox not in (0, 1):
        raise ValueError(f"grid offset must be in {{0, 1}}^2, got {offset}")
    if (grid_h % 2 and oy) or (grid_w % 2 and ox):
        raise ValueError(f"an odd grid side needs offset 0 on that axis, got {offset}")
    rows = torch.arange(grid_h).view(-1, 1)
    cols = torch.arange(grid_w).view(1, -1)
    keep = (rows % 2 == oy) & (cols % 2 == ox)
    surplus = int(keep.sum()) - num_keep(grid_h * grid_w, 0.75)
    if surplus:
        edge = [(r, grid_w - 1) for r in range(grid_h) if grid_w % 2 and keep[r, grid_w - 1]]
        edge += [
            (grid_h - 1, c)
            for c in reversed(range(grid_w))
            if grid_h % 2 and keep[grid_h - 1, c] and (grid_h - 1, c) not in edge
        ]
        for i in torch.linspace(0, len(edge) - 1, surplus).round().long().tolist():
            keep[edge[i]] = False
    return keep


SAMPLERS: dict[str, type[Sampler]] = {
    "random": RandomSampler,
    "block": BlockSampler,
    "grid": GridSampler,
}


def build_sampler(name: str) -> Sampler:
    """`masking.sampler` -> a sampler with its paper defaults."""
    try:
        return SAMPLERS[name]()
    except KeyError:
        raise ValueError(f"unknown mask sampler {name!r}; allowed: {', '.join(SAMPLERS)}") from None
