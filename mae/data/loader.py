"""Data loaders whose batches are a pure function of (seed, epoch, rank): an exact resume at an
epoch boundary replays the same batches.

Order: a permutation drawn from a private generator seeded with (seed, epoch), recomputed on every
iteration. Under DDP (`world_size` > 1) every rank draws the same permutation and takes its share
of each global batch of `batch_size * world_size` indices, so the world's global batch is exactly
the batch one process would load at the same global batch size; an incomplete last global batch
is dropped. Evaluation splits are sharded in contiguous blocks instead (`rank_range`), every image
measured once. Augmentation randomness:
- `num_workers=0`: transforms run in this process and draw from torch's global RNG (timm's via
  `TorchSeeded`), which the training loop saves and restores in its checkpoints; the loader itself
  never touches the global RNG.
- `num_workers>0`: each worker's torch, `random` and NumPy RNGs are seeded by torch from a base
  seed drawn from the loader's own (seed, epoch) generator, plus the worker id. The augmentations
  are then a function of (seed, epoch, num_workers), independent of the global RNG: a resume
  replays them exactly if it keeps the same worker count. Under DDP the rank enters the seed too.
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
        return iter(self.order())

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _ORDER_STREAM))
        return torch.randperm(self.n, generator=generator).tolist()


class GlobalBatchShard(Sampler[int]):
    """One rank's share of every whole global batch of the (seed, epoch) order: global batch b is
    `order[b * batch * world : (b + 1) * batch * world]` and rank r loads its r-th slice of
    `batch` indices. The same for every rank count that splits the global batch evenly."""

    def __init__(self, order: EpochOrder, batch: int, rank: int, world: int):
        self.order, self.batch, self.rank, self.world = order, batch, rank, world

    def __len__(self) -> int:
        return self.order.n // (self.batch * self.world) * self.batch

    def __iter__(self) -> Iterator[int]:
        order, span = self.order.order(), self.batch * self.world
        for start in range(0, len(self) // self.batch * span, span):
            yield from order[start + self.rank * self.batch : start + (self.rank + 1) * self.batch]


def rank_range(n: int, rank: int, world: int) -> range:
    """The contiguous block of range(n) that `rank` of `world` evaluates: blocks of ceil(n/world),
    in rank order, the last one shorter (or empty)."""
    size = -(-n // world)
    return range(min(n, rank * size), min(n, (rank + 1) * size))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """One epoch's loader; build a new one per epoch (the order depends on `epoch`). With
    `world_size` > 1, `batch_size` is this rank's share of the global batch and the loader holds
    the rank's slices of the whole global batches (training only: `drop_last` must be set)."""
    sampler: Sampler[int] = EpochOrder(len(dataset), shuffle, seed, epoch)
    worker_seed = derive_seed(seed, epoch, _WORKER_STREAM)
    if world_size > 1:
        if not drop_last:
            raise ValueError("sharding whole global batches drops the last one: set drop_last")
        sampler = GlobalBatchShard(sampler, batch_size, rank, world_size)
        worker_seed = derive_seed(seed, epoch, _WORKER_STREAM, rank)
    workers = torch.Generator().manual_seed(worker_seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=workers,
    )
