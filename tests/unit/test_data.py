"""mae.data on real data: digits (always), Fashion-MNIST (when fetched), and real-format CIFAR-10
pickles, IDX files and image folders written to a temporary directory."""

from __future__ import annotations

import gzip
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from mae.config import validate_config
from mae.data import (
    DataMissingError,
    DatasetInfo,
    dataset_info,
    eval_sets,
    load_source,
    make_loader,
    pretrain_set,
)
from mae.data.augment import AdaptChannels, finetune_train_transform
from mae.data.sources import (
    FASHION_MNIST_SYSTEM_DIR,
    TensorImages,
    find_fashion_mnist,
    load_fashion_mnist,
)
from mae.data.splits import subset_indices, train_val_indices
from mae.data.synthetic import synthetic_images

PRESETS = ("none", "crop_fixed", "crop_rand", "crop_colorjit")


def digits_cfg(micro, **data):
    """The micro (digits) config with a 200-image validation split and `data` overrides."""
    return micro(data={"val_size": 200, **data})


def batch(dataset, n=64):
    return torch.stack([dataset[i][0] for i in range(n)])


def needs_fashion_mnist():
    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST absent: run `make data` (scripts/fetch_fashion_mnist.sh)")


# --------------------------------------------------------------------------- sources


def test_digits_source_is_1797_images_in_a_fixed_1297_500_split():
    source = load_source("digits")
    assert (len(source.train), len(source.test)) == (1297, 500)
    assert source.train.images.shape == (1297, 1, 8, 8)
    assert source.train.images.dtype == torch.uint8 and source.train.labels.dtype == torch.int64
    assert source.train.images.max() == 255 and source.train.images.min() == 0
    assert source.num_classes == 10
    both = torch.cat([source.train.labels, source.test.labels])
    assert torch.bincount(both).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert load_source("digits") is source  # decoded once per process


def test_fashion_mnist_loads_60k_train_10k_test_balanced():
    needs_fashion_mnist()
    source = load_source("fashion_mnist")
    assert source.train.images.shape == (60000, 1, 28, 28)
    assert source.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(source.train.labels).tolist() == [6000] * 10
    assert torch.bincount(source.test.labels).tolist() == [1000] * 10
    info = dataset_info(validate_config({}))
    assert info.name == "fashion_mnist" and (info.image_size, info.channels) == (28, 1)
    assert info.mean[0] == pytest.approx(0.2860, abs=1e-4)
    assert info.std[0] == pytest.approx(0.3530, abs=1e-4)
    assert len(pretrain_set(validate_config({}))) == 55000


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_idx_files_are_read_gzipped_or_raw_from_the_given_root(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6), gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test, gz=False)  # torchvision's raw/ form
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 8, 7]), gz=False)
    source = load_fashion_mnist(str(tmp_path))
    assert torch.equal(source.train.images[:, 0], torch.from_numpy(train.astype(np.uint8)))
    assert torch.equal(source.test.images[:, 0], torch.from_numpy(test.astype(np.uint8)))
    assert source.train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert source.test.labels.tolist() == [9, 8, 7]


def test_missing_fashion_mnist_says_to_run_make_data(tmp_path, monkeypatch):
    if FASHION_MNIST_SYSTEM_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_SYSTEM_DIR} exists on this machine")
    monkeypatch.setenv("MAE_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("MAE_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(DataMissingError, match="make data"):
        load_fashion_mnist()


def write_cifar(folder: Path, per_batch: int) -> np.ndarray:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        labels = list(rng.integers(0, 10, per_batch))
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    return first


def test_cifar10_reads_python_batches_and_adapts_rgb_to_gray(tmp_path):
    first = write_cifar(tmp_path / "cifar-10-batches-py", per_batch=4)
    source = load_source("cifar10", str(tmp_path))
    assert source.train.images.shape == (20, 3, 32, 32) and len(source.test) == 4
    assert torch.equal(source.train.images[0], torch.from_numpy(first[0].reshape(3, 32, 32)))

    cfg = validate_config(
        {
            "data": {
                "dataset": "cifar10",
                "root": str(tmp_path),
                "channels": 1,
                "val_size": 4,
                "augmentation": "none",
            }
        }
    )
    info = dataset_info(cfg)
    assert (info.channels, len(info.mean)) == (1, 1)
    sets = pretrain_set(cfg)
    image, _ = sets[0]
    assert image.shape == (1, 32, 32)
    raw = source.train.images[int(sets.indices[0])]
    gray = F.rgb_to_grayscale(raw).float() / 255
    assert torch.allclose(image, (gray - info.mean[0]) / info.std[0], atol=1e-5)


def test_cifar10_absent_names_the_path_and_layout(tmp_path):
    with pytest.raises(DataMissingError, match="cifar-10-batches-py") as err:
        load_source("cifar10", str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value)


def write_folder(root: Path) -> None:
    rng = np.random.default_rng(2)
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_imagefolder_decodes_lazily_to_the_requested_side(tmp_path):
    write_folder(tmp_path)
    cfg = validate_config(
        {
            "data": {
                "dataset": "imagefolder",
                "root": str(tmp_path),
                "image_size": 16,
                "val_size": 2,
            },
            "finetune": {"image_size": 24},
        }
    )
    source = load_source("imagefolder", str(tmp_path))
    assert not isinstance(source.train, TensorImages) and source.image_size is None
    assert (len(source.train), len(source.test), source.num_classes) == (12, 4, 2)
    for preset in PRESETS:
        cfg.data.augmentation = preset
        assert pretrain_set(cfg)[0][0].shape == (3, 16, 16)
    sets = eval_sets(cfg, "finetune")
    assert (len(sets.train), len(sets.val), len(sets.test)) == (10, 2, 4)
    assert sets.train[0][0].shape == sets.test[3][0].shape == (3, 24, 24)
    assert sets.info.mean == pytest.approx((0.485, 0.456, 0.406))


def test_imagefolder_without_val_says_what_layout_is_expected(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataMissingError, match="val/"):
        load_source("imagefolder", str(tmp_path))


def test_synthetic_images_are_deterministic_balanced_and_any_shape():
    images, labels = synthetic_images(40, 12, 3, 4, seed=7)
    again, same_labels = synthetic_images(40, 12, 3, 4, seed=7)
    assert images.shape == (40, 3, 12, 12) and images.dtype == torch.uint8
    assert torch.equal(images, again) and torch.equal(labels, same_labels)
    assert torch.bincount(labels).tolist() == [10] * 4
    assert not torch.equal(images, synthetic_images(40, 12, 3, 4, seed=8)[0])
    gray, _ = synthetic_images(5, 20, 1, 3, seed=0)
    assert gray.shape == (5, 1, 20, 20)
    cfg = validate_config(
        {"data": {"dataset": "synthetic", "image_size": 16, "channels": 2, "num_classes": 5}}
    )
    info = dataset_info(cfg)
    assert (info.image_size, info.channels, info.num_classes) == (16, 2, 5)
    assert pretrain_set(cfg)[0][0].shape == (2, 16, 16)


# --------------------------------------------------------------------------- splits


def test_train_val_split_is_seeded_disjoint_and_stable():
    train, val = train_val_indices(1297, 200, seed=3)
    again_train, again_val = train_val_indices(1297, 200, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 200 and len(train) == 1097
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1297))
    assert not torch.equal(val, train_val_indices(1297, 200, seed=4)[1])
    # val_size clamps to a fifth of small train splits
    assert len(train_val_indices(1297, 5000, seed=0)[1]) == 259


def test_digits_eval_sets_have_documented_sizes_and_share_one_split(micro):
    cfg = digits_cfg(micro)
    sets = eval_sets(cfg, "finetune")
    assert (len(sets.train), len(sets.val), len(sets.test)) == (1097, 200, 500)
    assert set(sets.train.indices.tolist()).isdisjoint(sets.val.indices.tolist())
    assert torch.equal(sets.val.indices, eval_sets(cfg, "linprobe").val.indices)
    pretrain = pretrain_set(cfg)
    assert torch.equal(pretrain.indices, sets.train.indices)
    default = eval_sets(validate_config({"data": {"dataset": "digits"}}), "linprobe")
    assert (len(default.train), len(default.val)) == (1038, 259)  # val_size 5000 clamped


def test_train_subsets_are_seeded_and_drawn_from_train_only(micro):
    cfg = digits_cfg(micro, train_subset=100)
    subset = pretrain_set(cfg).indices
    assert len(subset) == 100 and torch.equal(subset, pretrain_set(cfg).indices)
    sets = eval_sets(cfg, "finetune")
    assert set(subset.tolist()) <= set(
        eval_sets(digits_cfg(micro), "finetune").train.indices.tolist()
    )
    assert set(subset.tolist()).isdisjoint(sets.val.indices.tolist())
    cfg.linprobe.train_subset = 50
    assert len(eval_sets(cfg, "linprobe").train) == 50
    assert len(subset_indices(torch.arange(10), None, 0)) == 10


# --------------------------------------------------------------------------- loaders


class Indices(Dataset):
    def __len__(self):
        return 50

    def __getitem__(self, i):
        return i


def order(loader):
    return torch.cat(list(loader)).tolist()


def test_loader_order_is_a_function_of_seed_and_epoch():
    data = Indices()
    first = order(make_loader(data, 8, shuffle=True, seed=1, epoch=0))
    assert sorted(first) == list(range(50))
    assert order(make_loader(data, 8, shuffle=True, seed=1, epoch=0)) == first
    assert order(make_loader(data, 8, shuffle=True, seed=1, epoch=1)) != first
    assert order(make_loader(data, 8, shuffle=True, seed=2, epoch=0)) != first
    loader = make_loader(data, 8, shuffle=True, seed=1, epoch=0)
    assert order(loader) == order(loader) == first  # re-iterating replays the epoch
    assert order(make_loader(data, 8, shuffle=False, seed=1, epoch=5)) == list(range(50))
    assert len(make_loader(data, 8, shuffle=True, seed=1, epoch=0, drop_last=True)) == 6


def test_loader_leaves_global_rng_to_the_augmentations(micro):
    rng = torch.get_rng_state()
    order(make_loader(Indices(), 8, shuffle=True, seed=0, epoch=0))
    assert torch.equal(torch.get_rng_state(), rng)  # sampling did not draw from it

    data = pretrain_set(digits_cfg(micro, augmentation="crop_rand"))
    torch.manual_seed(11)
    state = torch.get_rng_state()
    images, labels = next(iter(make_loader(data, 32, shuffle=True, seed=0, epoch=3)))
    torch.set_rng_state(state)  # what a checkpoint restore does
    again, again_labels = next(iter(make_loader(data, 32, shuffle=True, seed=0, epoch=3)))
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    different, _ = next(iter(make_loader(data, 32, shuffle=True, seed=0, epoch=3)))
    assert not torch.equal(images, different)  # the RNG moved on: fresh augmentations


def test_loader_with_workers_replays_regardless_of_global_rng(micro):
    data = pretrain_set(digits_cfg(micro, augmentation="crop_rand"))

    def first_batch(global_seed):
        torch.manual_seed(global_seed)
        loader = make_loader(data, 16, shuffle=True, seed=0, epoch=1, num_workers=2)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(1), first_batch(2))


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_give_normalised_float_images_of_the_right_shape(micro, preset):
    data = pretrain_set(digits_cfg(micro, augmentation=preset))
    images = batch(data)
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    rgb = pretrain_set(
        validate_config(
            {"data": {"dataset": "synthetic", "image_size": 16, "augmentation": preset}}
        )
    )
    assert batch(rgb, 4).shape == (4, 3, 16, 16)


def test_none_is_deterministic_identity_and_crop_rand_is_random(micro):
    cfg = digits_cfg(micro, augmentation="none")
    data, info = pretrain_set(cfg), dataset_info(cfg)
    raw = load_source("digits").train.images[data.indices[:64]].float() / 255
    expected = (raw - info.mean[0]) / info.std[0]
    assert torch.allclose(batch(data), expected, atol=1e-6)
    assert torch.equal(batch(data), batch(data))
    for preset in ("crop_fixed", "crop_rand", "crop_colorjit"):
        random_data = pretrain_set(digits_cfg(micro, augmentation=preset))
        assert not torch.equal(batch(random_data), batch(random_data)), preset


def test_normalisation_stats_match_the_raw_digits(micro):
    cfg = digits_cfg(micro, augmentation="none")
    info = dataset_info(cfg)
    images = load_source("digits").train.images
    levels = {round(v * 255 / 16) for v in range(17)}  # 0..16 scaled to 0..255
    assert set(images.unique().tolist()) <= levels
    pixels = images.double() / 255
    assert info.mean[0] == pytest.approx(pixels.mean().item(), rel=1e-9)
    assert info.std[0] == pytest.approx(pixels.std(unbiased=False).item(), rel=1e-9)
    normalised = batch(pretrain_set(cfg), 1000)
    assert abs(normalised.mean().item()) < 0.05 and abs(normalised.std().item() - 1) < 0.05


def test_channel_adaptation_and_resizing_for_evaluations():
    gray = torch.randint(0, 256, (1, 5, 5), dtype=torch.uint8)
    assert torch.equal(AdaptChannels(3)(gray), gray.repeat(3, 1, 1))
    rgb = torch.randint(0, 256, (3, 5, 5), dtype=torch.uint8)
    assert torch.equal(AdaptChannels(1)(rgb), F.rgb_to_grayscale(rgb))

    cfg = validate_config(
        {
            "data": {"dataset": "synthetic", "image_size": 16, "channels": 3},
            "finetune": {"dataset": "digits", "image_size": 32},
            "linprobe": {"dataset": "digits"},
        }
    )
    sets = eval_sets(cfg, "finetune")
    assert sets.info == DatasetInfo("digits", 32, 3, 10, sets.info.mean, sets.info.std)
    assert len(set(sets.info.mean)) == 1  # gray statistics repeated per channel
    image = sets.test[0][0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert sets.train[0][0].shape == (3, 32, 32)
    probe = eval_sets(cfg, "linprobe")
    assert probe.test[0][0].shape == (3, 16, 16)  # no stage size: the pre-training side


def test_finetune_transform_uses_timm_randaugment_only_on_large_enough_images(micro):
    cfg = micro(
        finetune={"augmentation": "timm", "randaug": "rand-m9-mstd0.5-inc1", "reprob": 0.25}
    )
    big = finetune_train_transform(cfg.finetune, 28, 1, (0.5,), (0.25,))
    small = finetune_train_transform(cfg.finetune, 8, 1, (0.5,), (0.25,))
    assert "RandAugment" in repr(big) and "RandAugment" not in repr(small)
    assert "RandomErasing" in repr(small)

    posterize = next(
        op
        for op in big.transforms[-1].transform.transforms[2].ops
        if op.name == "PosterizeIncreasing"
    )
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0
    black = posterize(Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)))
    assert np.asarray(black).max() == 0  # zero bits kept (Pillow 13 would raise)
    assert posterize.aug_fn is not auto_augment.posterize


def test_finetune_augmentation_depends_only_on_torch_rng():
    sets = eval_sets(
        validate_config({"data": {"dataset": "synthetic", "image_size": 32}}), "finetune"
    )
    py_state, np_state = random.getstate(), np.random.get_state()
    torch.manual_seed(0)
    first = batch(sets.train, 16)
    random.seed(123)
    np.random.seed(123)  # other RNGs must not matter
    torch.manual_seed(0)
    assert torch.equal(batch(sets.train, 16), first)
    random.setstate(py_state)
    np.random.set_state(np_state)
    before = random.getstate()
    sets.train[0]
    assert random.getstate() == before  # and are left untouched


def test_finetune_augmentation_none_trains_on_the_evaluation_transform():
    cfg = validate_config({"data": {"dataset": "synthetic", "image_size": 32}})
    augmented = eval_sets(cfg, "finetune").train
    plain_cfg = validate_config({**cfg.model_dump(), "finetune": {"augmentation": "none"}})
    plain = eval_sets(plain_cfg, "finetune")
    torch.manual_seed(0)
    first = plain.train[0][0]
    torch.manual_seed(1)
    assert torch.equal(plain.train[0][0], first)  # no random crop, flip or erasing
    index = int(plain.train.indices[0])
    assert torch.equal(first, plain.val.transform(plain.train.source[index][0]))
    torch.manual_seed(0)
    a = augmented[0][0]
    torch.manual_seed(1)
    assert not torch.equal(augmented[0][0], a)  # the timm recipe is random


def test_bad_stage_is_rejected(micro):
    with pytest.raises(ValueError, match="pretrain_set"):
        eval_sets(digits_cfg(micro), "pretrain")
    with pytest.raises(ValueError, match="allowed"):
        dataset_info(digits_cfg(micro), "bogus")
