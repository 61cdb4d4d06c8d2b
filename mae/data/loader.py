"""Data loaders whose batches are a pure function of (seed, epoch): an exact resume at an epoch
boundary replays the same batches.

Order: a permutation drawn from a private generator seeded with (seed, epoch), recomputed on every
iteration. Augmentation randomness:
- `num_workers=0`: transforms run in this process and draw from torch's global RNG (timm's via
  `TorchSeeded`), which the training loop saves and restores in its checkpoints; the loader itself
  never touches the global RNG.
- `num_workers>0`: each worker's torch, `random` and NumPy RNGs are seeded by torch from a base
  seed drawn from the loader's own (seed, epoch) generator, plus the worker id. The augmentations
  are then a function of (seed, epoch, num_workers), independent of the global RNG: a resume
  replays them exactly if it keeps the same worker count.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mae.data.splits import derive_seed

_ORDER_STREAM, _WORKER_STREAM = 0, 1


class EpochOrder(Sampler[int]):
    """range(n), shuffled by a generator seeded with (seed, epoch) when `shuffle`."""

    def __init__(self, n: int, shuffle: bool, seed: int, epoch: int):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _ORDER_STREAM))
        return iter(torch.randperm(self.n, generator=generator).tolist())


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """One epoch's loader; build a new one per epoch (the order depends on `epoch`)."""
    workers = torch.Generator().manual_seed(derive_seed(seed, epoch, _WORKER_STREAM))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochOrder(len(dataset), shuffle, seed, epoch),
        num_workers=num_workers,
        drop_last=drop_last,
        generator=workers,
    )
