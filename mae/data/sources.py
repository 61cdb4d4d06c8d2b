"""The raw data sets: decoded once into uint8 (N, C, H, W) tensors, or read lazily from folders.

A source knows nothing of splits, augmentation or normalisation: it returns the official train
and test splits with their labels. In-memory sources are cached per process (`load_source`), so
pre-training and the four evaluations decode a file once; treat their tensors as read-only.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mae.data.synthetic import synthetic_images
from mae.paths import project_root

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DIGITS_TEST_SIZE = 500  # digits has no official test split: a fixed seeded one stands in
DIGITS_SPLIT_SEED = 0
SYNTHETIC_SIZES = (2048, 512)  # (train, test) images
SYNTHETIC_SEED = 0
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class DataMissingError(FileNotFoundError):
    """A data set is not on disk; the message says where it was looked for and how to get it."""


class ImageSource(Protocol):
    """A split of a source: item i is (uint8 CHW image tensor, class index)."""

    labels: Tensor

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]: ...


class TensorImages(Dataset):
    """A split held in memory: images uint8 (N, C, H, W), labels int64 (N,)."""

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 (N, C, H, W) + N labels, got {tuple(images.shape)}")
        self.images, self.labels = images, labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


class FolderImages(Dataset):
    """An ImageNet-style class folder, decoded lazily (too big to hold): RGB uint8 CHW."""

    def __init__(self, root: Path):
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import pil_loader
        from torchvision.transforms.v2.functional import pil_to_tensor

        def load(path: str) -> Tensor:
            return pil_to_tensor(pil_loader(path))  # RGB; torchvision.io decoding is deprecated

        self.folder = ImageFolder(str(root), loader=load)
        self.labels = torch.tensor(self.folder.targets, dtype=torch.int64)
        self.classes: list[str] = self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.folder[index]


@dataclass(frozen=True)
class RawSplits:
    """The official splits of one data set. `image_size` is None when sizes vary (folders)."""

    name: str
    train: ImageSource
    test: ImageSource
    num_classes: int
    channels: int
    image_size: int | None


# --------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (gzipped or not): magic 0x0000, dtype code 0x08 (uint8), rank, dims."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not a uint8 IDX file (magic {data[:4].hex()})")
    rank = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_candidates(root: str | None = None) -> list[Path]:
    """Where Fashion-MNIST may lie, in lookup order."""
    cache_dir = project_root() / ".cache" / "datasets"
    found = [Path(root)] if root else []
    if env := os.environ.get("MAE_FASHION_MNIST_DIR"):
        found.append(Path(env))
    return [
        *found,
        FASHION_MNIST_SYSTEM_DIR,
        cache_dir / "fashion-mnist",
        cache_dir / "FashionMNIST" / "raw",
    ]


def find_fashion_mnist(root: str | None = None) -> Path | None:
    """The first candidate folder holding all four IDX files, or None."""
    for folder in fashion_mnist_candidates(root):
        if all(_idx_file(folder, name) for name in FASHION_MNIST_FILES.values()):
            return folder
    return None


def _fashion_mnist_folder(root: str | None) -> Path:
    folder = find_fashion_mnist(root)
    if folder is None:
        looked = ", ".join(map(str, fashion_mnist_candidates(root)))
        raise DataMissingError(
            f"Fashion-MNIST not found (looked in {looked}); run `make data` "
            "(scripts/fetch_fashion_mnist.sh) or set MAE_FASHION_MNIST_DIR"
        )
    return folder


def load_fashion_mnist(root: str | None = None) -> RawSplits:
    folder = _fashion_mnist_folder(root)
    arrays = {key: read_idx(_idx_file(folder, name)) for key, name in FASHION_MNIST_FILES.items()}

    def split(prefix: str) -> TensorImages:
        images = torch.from_numpy(arrays[f"{prefix}_images"].copy()).unsqueeze(1)
        return TensorImages(images, torch.from_numpy(arrays[f"{prefix}_labels"].astype(np.int64)))

    return RawSplits("fashion_mnist", split("train"), split("test"), 10, 1, 28)


# --------------------------------------------------------------------------- digits


def load_digits_source() -> RawSplits:
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255), split by a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    test, train = order[:DIGITS_TEST_SIZE].sort().values, order[DIGITS_TEST_SIZE:].sort().values
    return RawSplits(
        "digits",
        TensorImages(images[train], labels[train]),
        TensorImages(images[test], labels[test]),
        10,
        1,
        8,
    )


# --------------------------------------------------------------------------- synthetic


def load_synthetic(image_size: int, channels: int, num_classes: int) -> RawSplits:
    n_train, n_test = SYNTHETIC_SIZES
    images, labels = synthetic_images(
        n_train + n_test, image_size, channels, num_classes, seed=SYNTHETIC_SEED
    )
    return RawSplits(
        "synthetic",
        TensorImages(images[:n_train], labels[:n_train]),
        TensorImages(images[n_train:], labels[n_train:]),
        num_classes,
        channels,
        image_size,
    )


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_folder(root: str | None) -> Path:
    base = Path(root) if root else project_root() / ".cache" / "datasets"
    for folder in (base, base / "cifar-10-batches-py"):
        if all((folder / name).is_file() for name in (*CIFAR10_BATCHES, "test_batch")):
            return folder
    raise DataMissingError(
        f"CIFAR-10 not found at {base}: expected {base}/cifar-10-batches-py/ holding "
        "data_batch_1..data_batch_5 and test_batch (the python pickle version, "
        "cifar-10-python.tar.gz, unpacked); set data.root (nothing is downloaded)"
    )


def _cifar_batches(folder: Path, names: tuple[str, ...]) -> TensorImages:
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return TensorImages(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
    )


def load_cifar10(root: str | None) -> RawSplits:
    folder = _cifar_folder(root)
    return RawSplits(
        "cifar10",
        _cifar_batches(folder, CIFAR10_BATCHES),
        _cifar_batches(folder, ("test_batch",)),
        10,
        3,
        32,
    )


# --------------------------------------------------------------------------- ImageFolder


def _imagefolder_base(root: str | None) -> Path:
    if not root:
        raise DataMissingError("imagefolder needs data.root (a folder with train/ and val/)")
    base = Path(root)
    missing = [d for d in ("train", "val") if not (base / d).is_dir()]
    if missing:
        raise DataMissingError(
            f"imagefolder {base}: missing {', '.join(missing)}/; expected "
            f"{base}/train/<class>/*.JPEG and {base}/val/<class>/*.JPEG (ImageNet layout)"
        )
    return base


def load_imagefolder(root: str | None) -> RawSplits:
    """`root/train/<class>/*` is the official train split, `root/val/<class>/*` the test split."""
    base = _imagefolder_base(root)
    train, test = FolderImages(base / "train"), FolderImages(base / "val")
    if train.classes != test.classes:
        raise ValueError(f"imagefolder {base}: train/ and val/ hold different class folders")
    return RawSplits("imagefolder", train, test, len(train.classes), 3, None)


# --------------------------------------------------------------------------- entry point


class SourceKey(NamedTuple):
    """What identifies a loaded source: geometry only for synthetic, root only where it is read."""

    name: str
    root: str | None
    image_size: int | None
    channels: int | None
    num_classes: int | None


def source_key(
    name: str,
    root: str | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    num_classes: int | None = None,
) -> SourceKey:
    if name == "synthetic":
        return SourceKey(name, None, image_size or 32, channels or 3, num_classes or 10)
    return SourceKey(name, None if name == "digits" else root, None, None, None)


def load_source(
    name: str,
    root: str | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    num_classes: int | None = None,
) -> RawSplits:
    """Load data set `name` once per process. Geometry arguments only shape `synthetic`; `root`
    locates cifar10 and imagefolder, and comes first in fashion_mnist's lookup order."""
    key = source_key(name, root, image_size=image_size, channels=channels, num_classes=num_classes)
    return load_by_key(key)


def check_available(name: str, root: str | None = None) -> None:
    """Raise DataMissingError where data set `name` is not on disk, without decoding it: a
    launcher asks before it starts jobs that would each fail on it after their start-up."""
    match name:
        case "fashion_mnist":
            _fashion_mnist_folder(root)
        case "cifar10":
            _cifar_folder(root)
        case "imagefolder":
            _imagefolder_base(root)


@cache
def load_by_key(key: SourceKey) -> RawSplits:
    match key.name:
        case "fashion_mnist":
            return load_fashion_mnist(key.root)
        case "digits":
            return load_digits_source()
        case "synthetic":
            return load_synthetic(key.image_size, key.channels, key.num_classes)
        case "cifar10":
            return load_cifar10(key.root)
        case "imagefolder":
            return load_imagefolder(key.root)
    raise ValueError(
        f"unknown data set {key.name!r}; allowed: fashion_mnist, digits, synthetic, cifar10, "
        "imagefolder"
    )
