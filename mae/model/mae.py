"""The masked autoencoder: official `models_mae.py`, with the ablation knobs as small strategies.

Forward pass, as the official code: patch-embed, add the fixed sin-cos position embedding, mask
(the sampler picks which patches stay), prepend the class token, run the encoder; project to the
decoder width, put mask tokens back in place with `ids_restore`, add the decoder's position
embedding, run the decoder and predict every patch; the target computes the loss.

Knobs and where they live:
- which patches are hidden: `sampler` (`mae.model.masking`);
- what is predicted and how the loss is reduced: `target` (`mae.model.targets`);
- where the mask tokens enter (Table 1c): `VisibleOnlyEncoder` (default, "w/o [M]") or
  `MaskTokenEncoder` ("w/ [M]").
Encoder parameter names are those of timm's `VisionTransformer`, so fine-tuning loads
`encoder_state_dict()` directly.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Protocol

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from mae.config import ExperimentConfig
from mae.model.masking import Masking, RandomSampler, Sampler, build_sampler
from mae.model.patches import patchify, unpatchify
from mae.model.pos_embed import sincos_2d
from mae.model.targets import LossOn, PixelTarget, Target, build_target
from mae.model.tokenizer import build_tokenizer

# Top-level names of the parameters a timm VisionTransformer shares with our encoder.
ENCODER_KEYS = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm")


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (N, L, target.out_dim)
    mask: torch.Tensor  # (N, L), 1 = masked
    ids_restore: torch.Tensor  # (N, L)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (N, L, D), ids (N, K) -> (N, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class TokenRouting(Protocol):
    """Where the mask tokens enter: the difference between the two rows of Table 1(c)."""

    def mask_token_width(self, encoder_width: int, decoder_width: int) -> int: ...

    def encoder_tokens(
        self, x: torch.Tensor, pos: torch.Tensor, masking: Masking, mask_token: torch.Tensor
    ) -> torch.Tensor: ...

    def decoder_tokens(
        self, x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor
    ) -> torch.Tensor: ...


class VisibleOnlyEncoder:
    """MAE: the encoder sees the visible patches only; the decoder fills in mask tokens."""

    def mask_token_width(self, encoder_width: int, decoder_width: int) -> int:
        return decoder_width

    def encoder_tokens(
        self, x: torch.Tensor, pos: torch.Tensor, masking: Masking, mask_token: torch.Tensor
    ) -> torch.Tensor:
        return gather_tokens(x + pos, masking.ids_keep)

    def decoder_tokens(
        self, x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor
    ) -> torch.Tensor:
        n, length = ids_restore.shape
        fill = mask_token.to(x.dtype).expand(n, length + 1 - x.shape[1], -1)
        patches = gather_tokens(torch.cat([x[:, 1:], fill], dim=1), ids_restore)
        return torch.cat([x[:, :1], patches], dim=1)


class MaskTokenEncoder:
    """BEiT/SimMIM style ("w/ [M]"): hidden patch embeddings become a learned token before the
    position embedding is added; the encoder sees all L tokens and the decoder adds none."""

    def mask_token_width(self, encoder_width: int, decoder_width: int) -> int:
        return encoder_width

    def encoder_tokens(
        self, x: torch.Tensor, pos: torch.Tensor, masking: Masking, mask_token: torch.Tensor
    ) -> torch.Tensor:
        hidden = masking.mask.unsqueeze(-1).bool()
        return torch.where(hidden, mask_token.to(x.dtype), x) + pos

    def decoder_tokens(
        self, x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor
    ) -> torch.Tensor:
        return x


NORM = partial(nn.LayerNorm, eps=1e-6)  # official: LayerNorm with eps 1e-6 everywhere


def _blocks(width: int, heads: int, mlp_ratio: float, depth: int) -> nn.Sequential:
    """`depth` timm Transformer blocks (qkv bias, fused attention through SDPA)."""
    return nn.Sequential(
        *[Block(width, heads, mlp_ratio, qkv_bias=True, norm_layer=NORM) for _ in range(depth)]
    )


class MaskedAutoencoder(nn.Module):
    """MAE with a timm ViT encoder and a light ViT decoder (official defaults: ViT-L/16, 512x8)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        target: Target | None = None,
        sampler: Sampler | None = None,
        mask_ratio: float = 0.75,
        loss_on: LossOn = "masked",
        encoder_mask_tokens: bool = False,
    ):
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.mask_ratio, self.loss_on = mask_ratio, loss_on
        self.sampler = sampler or RandomSampler()
        self.routing: TokenRouting = (
            MaskTokenEncoder() if encoder_mask_tokens else VisibleOnlyEncoder()
        )
        self.target = target or PixelTarget(patch_size**2 * in_chans)

        # Encoder (timm VisionTransformer names).
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.grid_size[0]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, grid)[None], requires_grad=False)
        self.blocks = _blocks(embed_dim, num_heads, mlp_ratio, depth)
        self.norm = NORM(embed_dim)

        # Decoder (official names).
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        token_width = self.routing.mask_token_width(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, token_width))
        self.decoder_pos_embed = nn.Parameter(
            sincos_2d(decoder_embed_dim, grid)[None], requires_grad=False
        )
        self.decoder_blocks = _blocks(
            decoder_embed_dim, decoder_num_heads, decoder_mlp_ratio, decoder_depth
        )
        self.decoder_norm = NORM(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.target.out_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official init: xavier-uniform Linear (and the patch conv seen as a Linear), zero
        biases, unit LayerNorms, tokens ~ N(0, 0.02). A target's own weights (a tokenizer) are
        left as given."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for name, child in self.named_children():
            if name != "target":
                child.apply(_init_linear_and_norm)

    # ------------------------------------------------------------------ patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), pixels of a patch in (row, col, channel) order."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W), the inverse of `patchify`."""
        return unpatchify(x, self.patch_size, self.in_chans, self.patch_embed.grid_size)

    # ------------------------------------------------------------------ forward

    def encode(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the class token (with its zero position embedding) and run the encoder."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patch_tokens.shape[0], -1, -1)
        return self.norm(self.blocks(torch.cat([cls, patch_tokens], dim=1)))

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Masking]:
        x = self.patch_embed(imgs)
        gh, gw = self.patch_embed.grid_size
        masking = self.sampler(x.shape[0], gh, gw, mask_ratio, x.device, generator)
        x = self.routing.encoder_tokens(x, self.pos_embed[:, 1:], masking, self.mask_token)
        return self.encode(x), masking

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        x = self.routing.decoder_tokens(x, ids_restore, self.mask_token)
        x = self.decoder_blocks(x + self.decoder_pos_embed)
        return self.decoder_pred(self.decoder_norm(x[:, 1:]))

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        target = self.target(self.patchify(imgs))
        return self.target.loss(pred, target, mask, self.loss_on)

    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> MAEOutput:
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, masking = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent, masking.ids_restore)
        loss = self.forward_loss(imgs, pred, masking.mask)
        return MAEOutput(loss, pred, masking.mask, masking.ids_restore)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm VisionTransformer names (no mask token, no decoder)."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in ENCODER_KEYS}


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_mae(cfg: ExperimentConfig) -> MaskedAutoencoder:
    """The model an experiment config describes."""
    enc, dec, chans = cfg.encoder, cfg.decoder, cfg.image_channels
    tokenizer = build_tokenizer(cfg) if cfg.target.kind == "dvae" else None
    return MaskedAutoencoder(
        img_size=cfg.image_side,
        patch_size=enc.patch_size,
        in_chans=chans,
        embed_dim=enc.width,
        depth=enc.depth,
        num_heads=enc.heads,
        mlp_ratio=enc.mlp_ratio,
        decoder_embed_dim=dec.width,
        decoder_depth=dec.depth,
        decoder_num_heads=dec.heads,
        decoder_mlp_ratio=dec.mlp_ratio,
        target=build_target(cfg.target, enc.patch_size, chans, tokenizer),
        sampler=build_sampler(cfg.masking.sampler),
        mask_ratio=cfg.masking.ratio,
        loss_on=cfg.target.loss_on,
        encoder_mask_tokens=enc.mask_tokens,
    )
