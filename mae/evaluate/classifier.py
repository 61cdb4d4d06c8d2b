"""The classifier every protocol trains: timm's `VisionTransformer` carrying an MAE encoder.

The MAE encoder uses timm's parameter names, so its weights load straight into the classifier;
only the head and the norm that pooling decides (`fc_norm` after average pooling, `norm` before
the class token) may be missing, and the pre-trained `norm` is dropped under average pooling, as
in the official `main_finetune.py`. A different evaluation image size resamples the position
embedding (bicubic, official `interpolate_pos_embed`).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mae.config import ExperimentConfig
from mae.data import DatasetInfo
from mae.model import build_mae
from mae.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

Pool = Literal["avg", "token"]
# Keys a pre-trained encoder may lack or carry beyond the classifier: the head is new, and which
# of `norm` / `fc_norm` exists depends on the pooling.
HEAD_KEYS = frozenset({"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"})
NORM_KEYS = frozenset({"norm.weight", "norm.bias"})


def build_classifier(
    cfg: ExperimentConfig,
    info: DatasetInfo,
    *,
    pool: Pool,
    drop_path: float = 0.0,
    fc_norm: bool | None = None,
    num_classes: int | None = None,
) -> VisionTransformer:
    """A ViT with the encoder geometry of `cfg` at the evaluation set's size and classes.

    `fc_norm=None` follows timm: a fresh LayerNorm after average pooling, the final `norm` before
    the class token. `num_classes=0` leaves no head (the model returns pooled features).
    """
    enc = cfg.encoder
    if info.image_size % enc.patch_size:
        raise ValueError(
            f"evaluation image size {info.image_size} is not divisible by the encoder's patch "
            f"size {enc.patch_size}; set <stage>.image_size to a multiple of it"
        )
    return VisionTransformer(
        img_size=info.image_size,
        patch_size=enc.patch_size,
        in_chans=info.channels,
        num_classes=info.num_classes if num_classes is None else num_classes,
        global_pool=pool,
        fc_norm=fc_norm,
        embed_dim=enc.width,
        depth=enc.depth,
        num_heads=enc.heads,
        mlp_ratio=enc.mlp_ratio,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path,
    )


def pretrained_encoder(cfg: ExperimentConfig, checkpoint: Path) -> dict[str, torch.Tensor]:
    """The encoder weights of a finished pre-training's checkpoint, decoder dropped. A checkpoint
    of a pre-training that stopped early is refused: its encoder is not the one the config names."""
    state = load_checkpoint(checkpoint)
    if state is None:
        raise FileNotFoundError(f"no pre-training checkpoint at {checkpoint}")
    if state.get("final") is None:
        raise ValueError(
            f"{checkpoint}: the pre-training stopped after epoch {state.get('epoch', '?')} and has "
            "not finished; evaluations need a finished pre-training (run it to the end first)"
        )
    mae = build_mae(cfg)
    mae.load_state_dict(state["model"])
    return mae.encoder_state_dict()


def load_encoder(model: VisionTransformer, encoder: dict[str, torch.Tensor]) -> None:
    """Copy encoder weights into `model`, resampling the position embedding to its grid."""
    encoder = dict(encoder)
    pos = encoder["pos_embed"]
    if pos.shape != model.pos_embed.shape:
        log.info("resampling pos_embed %s -> %s", tuple(pos.shape), tuple(model.pos_embed.shape))
        encoder["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=model.num_prefix_tokens,
            interpolation="bicubic",
            antialias=False,  # official: F.interpolate(mode="bicubic", align_corners=False)
        )
    result = model.load_state_dict(encoder, strict=False)
    missing, unexpected = set(result.missing_keys), set(result.unexpected_keys)
    if missing - HEAD_KEYS or unexpected - NORM_KEYS:
        raise ValueError(
            f"encoder does not fit the classifier: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )


def init_head(head: nn.Linear, std: float) -> None:
    """Official head init: trunc_normal(std) weights (2e-5 fine-tuning, 0.01 probing), zero bias."""
    trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)
