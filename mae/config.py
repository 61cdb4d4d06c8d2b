"""The typed config tree of one MAE experiment and its content keys.

Everything that decides a result lives here, validated at the edge: a bad key or value fails with
the dotted key, the value and what is allowed, before anything runs. Content keys hash only the
fields that change results, so the same pre-training is recognised across studies and scales.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mae.overrides import flatten_dict
from mae.schema import Problem, Schema, schema_error

Sampler = Literal["random", "block", "grid"]
TargetKind = Literal["pixel", "norm_pixel", "pca", "dvae"]
Augmentation = Literal["none", "crop_fixed", "crop_rand", "crop_colorjit"]
DatasetName = Literal["fashion_mnist", "digits", "synthetic", "cifar10", "imagefolder"]
TokenizerKind = Literal["dvae", "dalle"]
Stage = Literal["tokenizer", "pretrain", "finetune", "linprobe", "partial", "scratch"]
EVAL_STAGES: tuple[str, ...] = ("finetune", "linprobe", "partial", "scratch")
DALLE_VOCAB = 8192  # codes of the DALL-E dVAE

# The config paths that the paper's tables vary. Every run records a paper label for each of them
# (params `label.<path>`), so a table is a query over labels whatever the scale maps values to.
TABLE_AXES: tuple[str, ...] = (
    "masking.ratio",
    "masking.sampler",
    "decoder.depth",
    "decoder.width",
    "encoder.mask_tokens",
    "target.kind",
    "data.augmentation",
    "pretrain.epochs",
)

# Native geometry of the built-in data sets: (image side, channels, classes). ImageFolder and
# synthetic take theirs from `data.image_size` / `data.channels` / `data.num_classes`.
DATASET_FACTS: dict[str, tuple[int, int, int]] = {
    "fashion_mnist": (28, 1, 10),
    "digits": (8, 1, 10),
    "cifar10": (32, 3, 10),
}


class Section(Schema):
    """A config section: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelSection(Section):
    preset: str = Field("custom", description="a name from mae.config.PRESETS, or 'custom'")


class EncoderConfig(Section):
    patch_size: int = Field(4, ge=1)
    width: int = Field(96, ge=8)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    mask_tokens: bool = False  # Table 1c: True = the encoder sees all L tokens ("w/ [M]")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> EncoderConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        return self


class DecoderConfig(Section):
    width: int = Field(64, ge=4)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> DecoderConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        return self


class MaskingConfig(Section):
    ratio: float = Field(0.75, gt=0.0, lt=1.0)
    sampler: Sampler = "random"

    @model_validator(mode="after")
    def _grid_keeps_one_in_four(self) -> MaskingConfig:
        if self.sampler == "grid" and abs(self.ratio - 0.75) > 1e-9:
            raise ValueError("the grid sampler keeps 1 of every 2x2 patches: ratio must be 0.75")
        return self


class TargetConfig(Section):
    kind: TargetKind = "pixel"
    loss_on: Literal["masked", "all"] = "masked"
    pca_components: int = Field(96, ge=1)  # paper: the largest 96 coefficients
    dvae_vocab: int = Field(8192, ge=2)  # codes of the in-project dVAE (DALL-E's are 8192)


class TokenizerConfig(Section):
    """How the dVAE target's tokens are made: the DALL-E encoder from a local weights file, or
    the in-project discrete VAE trained on the pre-training split (a stage of its own)."""

    kind: TokenizerKind = "dvae"
    weights: str | None = None  # dalle: a local file with the DALL-E encoder (encoder.pkl)
    hidden: int = Field(64, ge=4)  # dvae: channels of its convolutions and codebook vectors
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: float = Field(1, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    # Gumbel-softmax temperature, annealed exponentially from start to end over training
    temperature_start: float = Field(1.0, gt=0)
    temperature_end: float = Field(1 / 16, gt=0)  # DALL-E anneals 1 -> 1/16
    kl_weight: float = Field(0.03, ge=0)  # weight of KL(codes || uniform prior)
    seed: int = 0


class DataConfig(Section):
    dataset: DatasetName = "fashion_mnist"
    root: str | None = None  # ImageFolder / CIFAR-10 location; built-in sets find their own
    image_size: int | None = Field(None, ge=4)  # None: the data set's native side
    channels: int | None = Field(None, ge=1)  # None: the data set's native channels
    num_classes: int | None = Field(None, ge=2)
    augmentation: Augmentation = "crop_rand"
    train_subset: int | None = Field(None, ge=1)  # pre-training images drawn (seeded) from train
    val_size: int = Field(5000, ge=0)  # held out of the official train split, seeded
    split_seed: int = 0


class PretrainConfig(Section):
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(256, ge=1)  # per optimizer step, over all processes
    accum_iter: int = Field(1, ge=1)
    blr: float = Field(1.5e-4, gt=0)  # lr = blr * batch_size / 256
    min_lr: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0


class EvalCommon(Section):
    """Shared by every evaluation protocol; `dataset` None means the pre-training data set."""

    dataset: DatasetName | None = None
    root: str | None = None
    image_size: int | None = Field(None, ge=4)  # None: the pre-training size (pos-embed resampled)
    train_subset: int | None = Field(None, ge=1)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    blr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(2, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    seed: int = 0


class FinetuneConfig(EvalCommon):
    """End-to-end fine-tuning (paper Table 9); partial fine-tuning and scratch share it."""

    layer_decay: float = Field(0.75, gt=0, le=1)
    drop_path: float = Field(0.1, ge=0, lt=1)
    mixup: float = Field(0.8, ge=0)
    cutmix: float = Field(1.0, ge=0)
    smoothing: float = Field(0.1, ge=0, lt=1)
    randaug: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = Field(0.25, ge=0, le=1)
    global_pool: bool = True  # official default: mean of patch tokens + fc_norm
    betas: tuple[float, float] = (0.9, 0.999)
    # timm: the official train transform (random resized crop, flip, randaug, reprob); none: the
    # evaluation transform, for images too small for crops and flips (8x8 digits)
    augmentation: Literal["timm", "none"] = "timm"

    @model_validator(mode="before")
    @classmethod
    def _no_policy_without_augmentation(cls, data: Any) -> Any:
        """Without the timm transform RandAugment and random erasing never run: the config says
        so (randaug None, reprob 0), so params and content keys do not carry settings that had
        no effect."""
        if isinstance(data, Mapping) and data.get("augmentation") == "none":
            return {**data, "randaug": None, "reprob": 0.0}
        return data


class PartialConfig(FinetuneConfig):
    """Fig. 9: fine-tune only the last `blocks` blocks; 0.5 = the MLP of the last block only.

    `epochs` may list several schedules: each is trained and the one with the best final
    validation top-1 reports its test numbers (paper A.1: the best of 50, 100 and 200 epochs for
    each number of blocks, since tuning fewer blocks needs a longer schedule)."""

    epochs: int | list[int] = Field(20)
    blocks: float = Field(1, ge=0)

    @model_validator(mode="after")
    def _whole_or_half(self) -> PartialConfig:
        if self.blocks != 0.5 and self.blocks != int(self.blocks):
            raise ValueError(f"blocks must be a whole number or 0.5, got {self.blocks}")
        return self

    @field_validator("epochs")
    @classmethod
    def _schedules(cls, epochs: int | list[int]) -> int | list[int]:
        schedules = epochs if isinstance(epochs, list) else [epochs]
        if not schedules or min(schedules) < 1 or len(set(schedules)) != len(schedules):
            raise ValueError("a positive number of epochs, or a list of distinct ones")
        return epochs

    @property
    def schedules(self) -> list[int]:
        return list(self.epochs) if isinstance(self.epochs, list) else [self.epochs]


class ScratchConfig(FinetuneConfig):
    """Table 11: supervised ViT from random init (scaled by the scale files)."""

    blr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.3, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    layer_decay: float = Field(1.0, gt=0, le=1)
    betas: tuple[float, float] = (0.9, 0.95)


class LinprobeConfig(EvalCommon):
    epochs: int = Field(90, ge=1)
    batch_size: int = Field(1024, ge=1)
    blr: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["lars", "sgd"] = "lars"
    pool: Literal["cls", "avg"] = "cls"  # official: the class token
    augmentation: Literal["none", "crop_rand"] = "none"  # none: features are cached once


class RuntimeConfig(Section):
    """How a run executes; never part of a content key."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)
    progress: bool | None = None  # None: on when stderr is a TTY and not in CI
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(1, ge=1)  # epochs between checkpoints
    recon_images: int = Field(8, ge=0)  # images in the reconstruction grid PNG
    compile: bool | None = None  # torch.compile the pre-training model; None: on CUDA only


class ExperimentConfig(Section):
    model: ModelSection = ModelSection()
    encoder: EncoderConfig = EncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    masking: MaskingConfig = MaskingConfig()
    target: TargetConfig = TargetConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    linprobe: LinprobeConfig = LinprobeConfig()
    partial: PartialConfig = PartialConfig()
    scratch: ScratchConfig = ScratchConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """A preset fills encoder/decoder; keys given explicitly still win."""
        if not isinstance(data, Mapping):
            return data
        preset = (data.get("model") or {}).get("preset", "custom")
        if preset == "custom":
            return data
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}")
        merged = copy.deepcopy(PRESETS[preset])
        for section in ("encoder", "decoder"):
            merged[section].update(data.get(section) or {})
        return {**data, **merged}

    @model_validator(mode="after")
    def _geometry(self) -> ExperimentConfig:
        side, chans = self.image_side, self.image_channels
        if side % self.encoder.patch_size:
            raise ValueError(
                f"image size {side} is not divisible by encoder.patch_size "
                f"{self.encoder.patch_size}"
            )
        if self.masking.sampler in ("grid", "block") and (side // self.encoder.patch_size) < 2:
            raise ValueError("block and grid masking need a patch grid of at least 2x2")
        patch_dim = self.encoder.patch_size**2 * chans
        if self.target.kind == "pca" and self.target.pca_components > patch_dim:
            raise Problem(
                "target.pca_components",
                self.target.pca_components,
                f"at most the patch dimension {patch_dim} (encoder.patch_size^2 x channels)",
            )
        return self

    # Derived geometry, so that model and data agree on one number.
    @property
    def image_side(self) -> int:
        return self.data.image_size or DATASET_FACTS.get(self.data.dataset, (32, 3, 10))[0]

    @property
    def image_channels(self) -> int:
        return self.data.channels or DATASET_FACTS.get(self.data.dataset, (32, 3, 10))[1]

    @property
    def num_patches(self) -> int:
        return (self.image_side // self.encoder.patch_size) ** 2


# Paper presets (the official models_mae.py / models_vit.py) and small ones for CPU. All paper
# models use the 512-d, 8-block, 16-head decoder.
_PAPER_DECODER = {"width": 512, "depth": 8, "heads": 16}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "vit_b16": {
        "encoder": {"patch_size": 16, "width": 768, "depth": 12, "heads": 12},
        "decoder": dict(_PAPER_DECODER),
    },
    "vit_l16": {
        "encoder": {"patch_size": 16, "width": 1024, "depth": 24, "heads": 16},
        "decoder": dict(_PAPER_DECODER),
    },
    "vit_h14": {
        "encoder": {"patch_size": 14, "width": 1280, "depth": 32, "heads": 16},
        "decoder": dict(_PAPER_DECODER),
    },
    "vit_tiny_cpu": {
        "encoder": {"patch_size": 4, "width": 96, "depth": 4, "heads": 4},
        "decoder": {"width": 64, "depth": 2, "heads": 4},
    },
    "vit_micro_cpu": {
        "encoder": {"patch_size": 2, "width": 48, "depth": 2, "heads": 3},
        "decoder": {"width": 32, "depth": 1, "heads": 2},
    },
}


def validate_config(data: Mapping[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Build an ExperimentConfig from nested data; a problem is one ConfigError line."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise schema_error(exc, data, source, ExperimentConfig) from None


# --------------------------------------------------------------------------- canonical form, keys

# The sections (or dotted fields) each stage's content key hashes: what changes its result.
# `runtime` never does. A preset (`model`) is not hashed itself: it has expanded into `encoder` and
# `decoder` by then. An evaluation's key also hashes its pre-training's key, and a dVAE-target
# pre-training its tokenizer's; scratch has no pre-training, so the architecture and data it
# trains on are its own.
KEY_SECTIONS: dict[str, tuple[str, ...]] = {
    "tokenizer": ("tokenizer", "data", "target.dvae_vocab"),
    "pretrain": ("encoder", "decoder", "masking", "target", "data", "pretrain"),
    "finetune": ("finetune",),
    "linprobe": ("linprobe",),
    "partial": ("partial",),
    "scratch": ("scratch", "encoder", "data"),
}
PRESET_SECTIONS = ("encoder", "decoder")  # what `model.preset` fills


# Target fields that one kind alone reads. Other kinds hash them at their defaults, so that a scale
# may size the PCA target and the dVAE vocabulary without changing any other pre-training's key.
KIND_FIELDS: dict[str, str] = {"pca_components": "pca", "dvae_vocab": "dvae"}


def depends_on_pretraining(stage: str) -> bool:
    return stage in EVAL_STAGES and stage != "scratch"


def uses_tokenizer_stage(cfg: ExperimentConfig) -> bool:
    """Does this pre-training need the in-project dVAE trained first (a `tokenizer` run)?"""
    return cfg.target.kind == "dvae" and cfg.tokenizer.kind == "dvae"


def affects(stage: str, key: str) -> bool:
    """Does the dotted config `key` change the result (and so the content key) of `stage`?"""
    paths = KEY_SECTIONS[stage]
    if depends_on_pretraining(stage):
        paths += KEY_SECTIONS["pretrain"]
    if key.split(".", 1)[0] == "model":
        return any(s in paths for s in PRESET_SECTIONS)
    return any(key == path or key.startswith(f"{path}.") for path in paths)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, floats as Python prints them: the same config, the same text."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _hashed_fields(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as keys hash it: `KIND_FIELDS` of other target kinds at their defaults."""
    dumped = cfg.model_dump(mode="json")
    for name, kind in KIND_FIELDS.items():
        if cfg.target.kind != kind:
            dumped["target"][name] = TargetConfig.model_fields[name].default
    return dumped


def _at(tree: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def run_key(cfg: ExperimentConfig, stage: str) -> str:
    """Content key of a run: the hash of what `stage` depends on (`KEY_SECTIONS`) and, for an
    evaluation of a pre-training, of that pre-training's key; a dVAE-target pre-training also
    hashes its tokenizer's key."""
    if stage not in KEY_SECTIONS:
        raise ValueError(f"unknown stage {stage!r}; allowed: {', '.join(KEY_SECTIONS)}")
    dumped = _hashed_fields(cfg)
    payload: dict[str, Any] = {path: _at(dumped, path) for path in KEY_SECTIONS[stage]}
    if stage != "pretrain":
        payload["stage"] = stage
    if depends_on_pretraining(stage):
        payload["pretrain_key"] = pretrain_key(cfg)
    if stage == "pretrain" and cfg.target.kind == "dvae":
        payload["tokenizer_key"] = run_key(cfg, "tokenizer")
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def pretrain_key(cfg: ExperimentConfig) -> str:
    return run_key(cfg, "pretrain")


def flatten_config(cfg: ExperimentConfig) -> dict[str, str]:
    """Every leaf as a dotted key -> string, the form MLflow params take and tables query."""
    return {
        k: json.dumps(v) if isinstance(v, list | tuple) else str(v)
        for k, v in flatten_dict(cfg.model_dump(mode="json")).items()
    }
