"""Per-channel normalisation statistics of a data set, as the encoder sees it (after channel
adaptation): computed once over the whole official train split of in-memory sets; ImageNet's
constants for folders (the official recipe), too big to scan."""

from __future__ import annotations

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from mae.data.augment import AdaptChannels
from mae.data.sources import RawSplits, TensorImages

_CHUNK = 4096  # images per pass: bounds float64 memory on large sets
LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and (population) std per channel of uint8 (N, C, H, W) images scaled to [0, 1]."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(_CHUNK):
        values = chunk.to(torch.float64).div_(255.0)
        total += values.sum(dim=(0, 2, 3))
        squares += values.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def source_stats(source: RawSplits, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean/std of `source`'s train split adapted to `channels`."""
    if isinstance(source.train, TensorImages):
        adapt = AdaptChannels(channels)
        images = source.train.images
        if images.shape[1] == channels:
            return channel_stats(images)
        if channels < images.shape[1]:  # a luminance std needs the channel covariances: convert
            return channel_stats(torch.cat([adapt(c) for c in images.split(_CHUNK)]))
        mean, std = channel_stats(images)  # repeat: the same statistics per channel
        return mean * channels, std * channels
    if channels == 3:
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    # Gray folders: luminance of the ImageNet mean; the std bound assumes fully correlated channels.
    mean = sum(w * m for w, m in zip(LUMA, IMAGENET_DEFAULT_MEAN, strict=True))
    std = sum(w * s for w, s in zip(LUMA, IMAGENET_DEFAULT_STD, strict=True))
    return (mean,) * channels, (std,) * channels
