"""Per-image transforms: the pre-training presets of Table 1(e) and the evaluation protocols'.

Every transform takes a uint8 CHW tensor in the source's channels and returns a float CHW tensor
at the requested side and channels, normalised with the data set's mean/std. Pre-training presets
and evaluation crops are torchvision v2 tensor transforms (fast on small images); fine-tuning uses
timm's `create_transform` on PIL images, as the official code does.

Randomness: v2 transforms draw from torch's global RNG. timm's draw from Python's `random` and
NumPy's global RNG; `TorchSeeded` reseeds those from torch's RNG for each image and restores them
after, so with `num_workers=0` every augmentation is a function of torch's RNG state alone (which
the training loop checkpoints).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment, create_transform
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mae.config import FinetuneConfig

BICUBIC = v2.InterpolationMode.BICUBIC
CROP_PCT = 0.875  # official evaluation: resize to side / 0.875, then centre-crop `side`
PRETRAIN_SCALE = (0.2, 1.0)  # official MAE RandomResizedCrop scale
MIN_RANDAUG_SIDE = 16  # RandAugment's shears/translations/posterize make no sense below this
JITTER = 0.4  # Table 1(e) colour jitter strength (brightness, contrast, saturation)

Transform = Callable[[Tensor], Tensor]


class AdaptChannels:
    """Map images to the encoder's channels: RGB -> gray by luminance, gray -> RGB by repeat."""

    def __init__(self, channels: int):
        self.channels = channels

    def __call__(self, image: Tensor) -> Tensor:
        have = image.shape[-3]
        if have == self.channels:
            return image
        if have == 3 and self.channels == 1:
            return F.rgb_to_grayscale(image, num_output_channels=1)
        if have == 1:
            return image.expand(*image.shape[:-3], self.channels, *image.shape[-2:])
        raise ValueError(f"cannot adapt {have}-channel images to {self.channels} channels")

    def __repr__(self) -> str:
        return f"AdaptChannels({self.channels})"


class TorchSeeded:
    """Run a transform with Python's and NumPy's global RNGs seeded from torch's global RNG.

    Their previous states are restored afterwards, so nothing else sees a difference; the output
    depends only on the input and torch's RNG state.
    """

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image):
        seed = int(torch.randint(0, 2**62, ()).item())
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.transform(image)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __repr__(self) -> str:
        return f"TorchSeeded({self.transform!r})"


def _to_normalised(mean: Sequence[float], std: Sequence[float]) -> list[Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def resize_centre_crop(side: int, native: int | None) -> list[Transform]:
    """Evaluation geometry. In-memory sets have one native side: resize it to `side` (nothing at
    all when equal). Folders of assorted sizes get the official resize-to-side/0.875 + centre crop.
    """
    if native == side:
        return []
    resize_to = side if native is not None else round(side / CROP_PCT)
    return [v2.Resize(resize_to, interpolation=BICUBIC, antialias=True), v2.CenterCrop(side)]


def random_resized_crop(side: int, scale: tuple[float, float]) -> list[Transform]:
    return [
        v2.RandomResizedCrop(side, scale=scale, interpolation=BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
    ]


def pretrain_transform(
    preset: str,
    side: int,
    channels: int,
    native: int | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """Table 1(e): `none` centre crop only (identity at the native side), `crop_fixed` a random
    crop of fixed size (side out of side/0.875, the 224-of-256 of ImageNet) + flip, `crop_rand`
    RandomResizedCrop(scale 0.2-1, bicubic) + flip (official), `crop_colorjit` crop_rand + colour
    jitter 0.4 (brightness and contrast only on 1-channel images)."""
    match preset:
        case "none":
            geometry = resize_centre_crop(side, native)
        case "crop_fixed":
            geometry = [
                v2.Resize(round(side / CROP_PCT), interpolation=BICUBIC, antialias=True),
                v2.RandomCrop(side),
                v2.RandomHorizontalFlip(),
            ]
        case "crop_rand":
            geometry = random_resized_crop(side, PRETRAIN_SCALE)
        case "crop_colorjit":
            saturation = JITTER if channels == 3 else None
            geometry = [
                *random_resized_crop(side, PRETRAIN_SCALE),
                v2.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=saturation),
            ]
        case _:
            raise ValueError(
                f"unknown augmentation {preset!r}; allowed: none, crop_fixed, crop_rand, "
                "crop_colorjit"
            )
    return v2.Compose([AdaptChannels(channels), *geometry, *_to_normalised(mean, std)])


def eval_transform(
    side: int, channels: int, native: int | None, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Validation / test: resize + centre crop, no randomness."""
    geometry = resize_centre_crop(side, native)
    return v2.Compose([AdaptChannels(channels), *geometry, *_to_normalised(mean, std)])


def eval_crop_scale(side: int) -> tuple[float, float]:
    """Evaluation RandomResizedCrop scale: timm's (0.08, 1) at ImageNet-like sizes, (0.2, 1) on
    small images, where an 8% crop of a 28-px image keeps about 8 pixels a side."""
    return (0.08, 1.0) if side >= 64 else (0.2, 1.0)


def linprobe_train_transform(
    augmentation: str,
    side: int,
    channels: int,
    native: int | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """`none`: the evaluation transform (features can be cached); `crop_rand`: RRC + flip."""
    if augmentation == "none":
        return eval_transform(side, channels, native, mean, std)
    if augmentation == "crop_rand":
        geometry = random_resized_crop(side, eval_crop_scale(side))
        return v2.Compose([AdaptChannels(channels), *geometry, *_to_normalised(mean, std)])
    raise ValueError(f"unknown linprobe augmentation {augmentation!r}; allowed: none, crop_rand")


def finetune_train_transform(
    section: FinetuneConfig,
    side: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """The official fine-tuning recipe through timm: RandomResizedCrop (bicubic) + flip,
    RandAugment (`section.randaug`, skipped below 16 px), random erasing (`section.reprob`,
    pixel mode), no colour jitter. Works on 1-channel (PIL 'L') and 3-channel images."""
    timm_transform = create_transform(
        input_size=(channels, side, side),
        is_training=True,
        scale=eval_crop_scale(side),
        color_jitter=None,
        auto_augment=section.randaug if side >= MIN_RANDAUG_SIDE else None,
        interpolation="bicubic",
        re_prob=section.reprob,
        re_mode="pixel",
        re_count=1,
        mean=tuple(mean),
        std=tuple(std),
    )
    _allow_zero_bit_posterize(timm_transform)
    return v2.Compose([AdaptChannels(channels), v2.ToPILImage(), TorchSeeded(timm_transform)])


def _posterize(image: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """Zero bits keep nothing: a black image, as Pillow used to return. Pillow 13 raises instead,
    which timm's RandAugment hits whenever 'PosterizeIncreasing' draws magnitude 10 (mstd0.5
    around m9 does so about 2% of the time)."""
    if bits_to_keep < 1:
        return Image.new(image.mode, image.size)
    return auto_augment.posterize(image, bits_to_keep, **kwargs)


def _allow_zero_bit_posterize(transform: Callable) -> None:
    """Swap `_posterize` into the posterize ops of this transform's RandAugment instances."""
    for step in getattr(transform, "transforms", ()):
        for op in getattr(step, "ops", ()):
            if isinstance(op, auto_augment.AugmentOp) and op.aug_fn is auto_augment.posterize:
                op.aug_fn = _posterize
