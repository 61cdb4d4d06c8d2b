"""Data: sources (Fashion-MNIST, digits, synthetic, CIFAR-10, ImageFolder), seeded splits, the
augmentation presets of Table 1(e) and the evaluation protocols', and reproducible loaders."""

from mae.data.loader import make_loader, rank_range
from mae.data.sets import DatasetInfo, EvalSets, dataset_info, eval_sets, pretrain_set
from mae.data.sources import DataMissingError, RawSplits, load_source

__all__ = [
    "DataMissingError",
    "DatasetInfo",
    "EvalSets",
    "RawSplits",
    "dataset_info",
    "eval_sets",
    "load_source",
    "make_loader",
    "rank_range",
    "pretrain_set",
]
