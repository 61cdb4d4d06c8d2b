"""What training and evaluation iterate over: a source, a seeded split and a transform, per stage.

The official train split loses `data.val_size` images (seeded by `data.split_seed`) to a
validation set; pre-training and every evaluation train on the rest (optionally a seeded
`train_subset` of it), validate on the held-out images and report on the official test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mae.config import EVAL_STAGES, EvalCommon, ExperimentConfig
from mae.data.augment import (
    eval_transform,
    finetune_train_transform,
    linprobe_train_transform,
    pretrain_transform,
)
from mae.data.sources import (
    DataMissingError,
    ImageSource,
    RawSplits,
    SourceKey,
    check_available,
    load_by_key,
    source_key,
)
from mae.data.splits import subset_indices, train_val_indices
from mae.data.stats import source_stats
from mae.schema import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the images a stage feeds it."""

    name: str
    image_size: int
    channels: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class TransformedSubset(Dataset):
    """Items `indices` of a source, each passed through `transform`: (float CHW, int label)."""

    def __init__(self, source: ImageSource, indices: Tensor, transform):
        self.source, self.indices, self.transform = source, indices, transform

    @property
    def labels(self) -> Tensor:
        return self.source.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.source[int(self.indices[index])]
        return self.transform(image), label


class EvalSets(NamedTuple):
    train: TransformedSubset
    val: TransformedSubset
    test: TransformedSubset
    info: DatasetInfo


@dataclass(frozen=True)
class _Plan:
    """Which data a stage reads, at which side and channels."""

    dataset: str
    root: str | None
    side: int
    channels: int
    section: str = "data"  # the config section that names `dataset`


def _plan(cfg: ExperimentConfig, stage: str) -> _Plan:
    if stage == "pretrain":
        return _Plan(cfg.data.dataset, cfg.data.root, cfg.image_side, cfg.image_channels)
    if stage not in EVAL_STAGES:
        raise ValueError(f"unknown stage {stage!r}; allowed: pretrain, {', '.join(EVAL_STAGES)}")
    section: EvalCommon = getattr(cfg, stage)
    dataset = section.dataset or cfg.data.dataset
    root = section.root or (cfg.data.root if dataset == cfg.data.dataset else None)
    named_in = stage if section.dataset else "data"
    return _Plan(dataset, root, section.image_size or cfg.image_side, cfg.image_channels, named_in)


def check_stage_data(cfg: ExperimentConfig, stage: str, source: str) -> None:
    """Raise ConfigError (from `source`, naming the key) where the data `stage` reads is not on
    disk (a tokenizer reads the pre-training set)."""
    plan = _plan(cfg, "pretrain" if stage == "tokenizer" else stage)
    try:
        check_available(plan.dataset, plan.root)
    except DataMissingError as exc:
        raise ConfigError(source, f"{plan.section}.dataset", plan.dataset, str(exc)) from None


def _key(cfg: ExperimentConfig, plan: _Plan) -> SourceKey:
    """The plan's data set; synthetic images are drawn at the pre-training geometry."""
    return source_key(
        plan.dataset,
        plan.root,
        image_size=cfg.image_side,
        channels=cfg.image_channels,
        num_classes=cfg.data.num_classes,
    )


def _source(cfg: ExperimentConfig, plan: _Plan) -> RawSplits:
    source = load_by_key(_key(cfg, plan))
    wanted = cfg.data.num_classes
    if wanted is not None and plan.dataset == cfg.data.dataset and wanted != source.num_classes:
        raise ValueError(
            f"data.num_classes is {wanted} but {plan.dataset} has {source.num_classes} classes"
        )
    return source


@cache
def _stats(key: SourceKey, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return source_stats(load_by_key(key), channels)


def _info(cfg: ExperimentConfig, plan: _Plan, source: RawSplits) -> DatasetInfo:
    mean, std = _stats(_key(cfg, plan), plan.channels)
    return DatasetInfo(plan.dataset, plan.side, plan.channels, source.num_classes, mean, std)


def dataset_info(cfg: ExperimentConfig, stage: str = "pretrain") -> DatasetInfo:
    """Name, side, channels, classes and normalisation of the images `stage` sees."""
    plan = _plan(cfg, stage)
    return _info(cfg, plan, _source(cfg, plan))


def _train_val(cfg: ExperimentConfig, source: RawSplits) -> tuple[Tensor, Tensor]:
    return train_val_indices(len(source.train), cfg.data.val_size, cfg.data.split_seed)


def pretrain_set(cfg: ExperimentConfig) -> TransformedSubset:
    """The pre-training images (train split minus validation, `data.train_subset` of them when
    set) through the `data.augmentation` preset."""
    plan = _plan(cfg, "pretrain")
    source = _source(cfg, plan)
    info = _info(cfg, plan, source)
    train, _ = _train_val(cfg, source)
    train = subset_indices(train, cfg.data.train_subset, cfg.data.split_seed)
    transform = pretrain_transform(
        cfg.data.augmentation, plan.side, plan.channels, source.image_size, info.mean, info.std
    )
    return TransformedSubset(source.train, train, transform)


def eval_sets(cfg: ExperimentConfig, stage: str) -> EvalSets:
    """Train / val / test sets of an evaluation protocol (finetune, linprobe, partial, scratch).

    Train: `<stage>.train_subset` of the non-validation train images with the protocol's
    augmentation (timm's fine-tuning recipe or, with `augmentation: none`, the evaluation
    transform; linprobe's `none` / `crop_rand`); val (held out
    of the official train split) and test (the official test split) are resized and centre-cropped.
    """
    if stage == "pretrain":
        raise ValueError("eval_sets takes an evaluation stage; use pretrain_set for pre-training")
    plan = _plan(cfg, stage)
    source = _source(cfg, plan)
    info = _info(cfg, plan, source)
    section: EvalCommon = getattr(cfg, stage)
    train, val = _train_val(cfg, source)
    train = subset_indices(train, section.train_subset, cfg.data.split_seed)
    native, side, channels = source.image_size, plan.side, plan.channels
    plain = eval_transform(side, channels, native, info.mean, info.std)
    if stage == "linprobe":
        train_transform = linprobe_train_transform(
            cfg.linprobe.augmentation, side, channels, native, info.mean, info.std
        )
    elif section.augmentation == "none":  # images too small for crops and flips (8x8 digits)
        train_transform = plain
    else:
        train_transform = finetune_train_transform(section, side, channels, info.mean, info.std)
    return EvalSets(
        TransformedSubset(source.train, train, train_transform),
        TransformedSubset(source.train, val, plain),
        TransformedSubset(source.test, torch.arange(len(source.test)), plain),
        info,
    )
