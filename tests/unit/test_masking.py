"""Mask samplers: exact counts, invertible shuffles, and the shapes each sampler promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from mae.model.masking import (
    BlockSampler,
    GridSampler,
    RandomSampler,
    build_sampler,
    grid_keep,
    num_keep,
)

CASES = [
    ("random", 7, 0.75),
    ("random", 14, 0.9),
    ("random", 4, 0.5),
    ("block", 7, 0.75),
    ("block", 14, 0.75),
    ("block", 14, 0.5),
    ("block", 4, 0.75),
    ("grid", 7, 0.75),
    ("grid", 14, 0.75),
    ("grid", 4, 0.75),
]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("name", "side", "ratio"), CASES)
def test_sampler_keeps_exact_count_and_restores_order(name: str, side: int, ratio: float) -> None:
    n, length = 16, side * side
    ids_keep, ids_restore, mask = build_sampler(name)(n, side, side, ratio, "cpu", _gen())
    len_keep = num_keep(length, ratio)

    assert ids_keep.shape == (n, len_keep) and ids_restore.shape == (n, length)
    assert mask.shape == (n, length) and mask.dtype == torch.float32
    assert (mask.sum(1) == length - len_keep).all()
    for row in ids_keep:
        assert len(set(row.tolist())) == len_keep
    # The kept patches are exactly the unmasked ones.
    assert (torch.gather(mask, 1, ids_keep) == 0).all()

    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :len_keep], ids_keep)
    x = torch.randn(n, length, 5)
    idx = ids_shuffle.unsqueeze(-1).expand(-1, -1, 5)
    shuffled = torch.gather(x, 1, idx)
    restored = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 5))
    assert torch.equal(restored, x)
    # The mask is "kept first, then masked" unshuffled, as the official code builds it.
    ordered = torch.cat([torch.zeros(n, len_keep), torch.ones(n, length - len_keep)], 1)
    assert torch.equal(torch.gather(ordered, 1, ids_restore), mask)


@pytest.mark.parametrize("sampler", [RandomSampler(), BlockSampler()])
def test_generator_makes_masks_reproducible(sampler) -> None:
    a = sampler(8, 14, 14, 0.75, "cpu", _gen(1)).mask
    b = sampler(8, 14, 14, 0.75, "cpu", _gen(1)).mask
    c = sampler(8, 14, 14, 0.75, "cpu", _gen(2)).mask
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # per-image masks


def _boundary(mask: np.ndarray) -> int:
    """Masked/visible neighbour pairs: small for compact blocks, large for scattered patches."""
    return int((mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_block_masks_are_few_compact_regions(ratio: float) -> None:
    n, side = 64, 14
    block = BlockSampler()(n, side, side, ratio, "cpu", _gen()).mask.view(n, side, side).numpy()
    rand = RandomSampler()(n, side, side, ratio, "cpu", _gen()).mask.view(n, side, side).numpy()
    masked = side * side - num_keep(side * side, ratio)
    fill = []
    for m in block:
        labels, count = ndimage.label(m)
        assert count < masked / 3
        for region in ndimage.find_objects(labels):
            area = (labels[region] > 0).sum()
            fill.append(area / labels[region].size)
    assert np.mean(fill) > 0.6  # regions are mostly rectangles (unions of overlapping ones)
    assert np.mean([_boundary(m) for m in block]) < 0.5 * np.mean([_boundary(m) for m in rand])


def test_block_sampler_fills_when_rectangles_cannot_fit() -> None:
    # A 2x2 grid: min_area 4 fits only the whole grid, which would overshoot 3 masked patches.
    mask = BlockSampler()(4, 2, 2, 0.75, "cpu", _gen()).mask
    assert (mask.sum(1) == 3).all()


def test_grid_even_keeps_one_per_cell_at_offset() -> None:
    for offset in [(0, 0), (1, 0), (1, 1)]:
        mask = GridSampler(offset)(3, 14, 14, 0.75, "cpu").mask.view(3, 7, 2, 7, 2)
        kept = (1 - mask).permute(0, 1, 3, 2, 4)  # (n, cell_row, cell_col, dy, dx)
        assert (kept.sum((-1, -2)) == 1).all()
        assert (kept[..., offset[0], offset[1]] == 1).all()


def test_grid_odd_side_drops_surplus_on_the_edge() -> None:
    keep = grid_keep(7, 7)
    assert int(keep.sum()) == num_keep(49, 0.75) == 12
    interior = keep[:6, :6].reshape(3, 2, 3, 2).permute(0, 2, 1, 3)
    assert (interior.sum((-1, -2)) == 1).all() and interior[..., 0, 0].all()
    lattice = (torch.arange(7)[:, None] % 2 == 0) & (torch.arange(7)[None] % 2 == 0)
    assert not (keep & ~lattice).any()  # only lattice points are kept
    edge = keep[6].sum() + keep[:6, 6].sum()
    assert edge == 3
    mask = GridSampler()(2, 7, 7, 0.75, "cpu").mask
    assert torch.equal(mask[0], (~keep).flatten().float()) and torch.equal(mask[0], mask[1])


def test_grid_rejects_other_ratios_and_odd_offsets() -> None:
    with pytest.raises(ValueError, match="0.75"):
        GridSampler()(1, 14, 14, 0.5, "cpu")
    with pytest.raises(ValueError, match="odd"):
        grid_keep(7, 7, (1, 0))


def test_build_sampler_names() -> None:
    assert isinstance(build_sampler("random"), RandomSampler)
    with pytest.raises(ValueError, match="allowed: random, block, grid"):
        build_sampler("checkerboard")
