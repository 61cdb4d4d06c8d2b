"""Seeded index splits: validation held out of the official train split, and training subsets.

Every split is a pure function of its sizes and seeds (a private torch.Generator, never the global
RNG), so the same config sees the same images on every machine, call and resume.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

MAX_VAL_FRACTION = 5  # at most a fifth of the train split is held out, so small sets still train
_VAL_STREAM, _SUBSET_STREAM = 0, 1


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (NumPy's SeedSequence): (0, 1) and (1, 0) differ."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _permutation(n: int, *seed_parts: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(*seed_parts)))


def val_count(n_train: int, val_size: int) -> int:
    """`val_size`, clamped to a fifth of the train split."""
    count = min(val_size, n_train // MAX_VAL_FRACTION)
    if count < val_size:
        log.info("val_size %d clamped to %d (a fifth of %d train images)", val_size, count, n_train)
    return count


def train_val_indices(n_train: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint sorted int64 indices (train, val) covering range(n_train)."""
    order = _permutation(n_train, seed, _VAL_STREAM)
    count = val_count(n_train, val_size)
    return order[count:].sort().values, order[:count].sort().values


def subset_indices(indices: Tensor, size: int | None, seed: int) -> Tensor:
    """A seeded subset of `size` of `indices` (all of them when size is None or too large)."""
    if size is None or size >= len(indices):
        return indices
    chosen = _permutation(len(indices), seed, _SUBSET_STREAM)[:size]
    return indices[chosen.sort().values]
