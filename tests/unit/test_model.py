"""The masked autoencoder: shapes, faithfulness to the official model, timm compatibility."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from support import mae_features
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mae.config import validate_config
from mae.model import MaskedAutoencoder, build_mae
from mae.model.masking import num_keep
from mae.model.pos_embed import sincos_2d


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, side, side, generator=_gen(seed))


# ----------------------------------------------------------------------------- shapes, patches


@pytest.mark.parametrize("kind", ["pixel", "norm_pixel"])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes_and_gradients(micro, kind: str, channels: int) -> None:
    cfg = micro(
        data={"dataset": "synthetic", "image_size": 16, "channels": channels}, target={"kind": kind}
    )
    model = build_mae(cfg)
    out = model(_images(3, channels, 16))
    length = (16 // 2) ** 2
    assert out.pred.shape == (3, length, 2 * 2 * channels)
    assert out.mask.shape == out.ids_restore.shape == (3, length)
    assert (out.mask.sum(1) == length - num_keep(length, 0.75)).all()
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def test_mask_ratio_override_and_generator(micro) -> None:
    model = build_mae(micro())
    x = _images(4, 1, 8)
    assert (model(x, mask_ratio=0.5).mask.sum(1) == 8).all()
    a, b = model(x, generator=_gen(3)), model(x, generator=_gen(3))
    assert torch.equal(a.pred, b.pred) and torch.equal(a.mask, b.mask)


def test_patchify_order_and_round_trip(micro) -> None:
    model = build_mae(micro(data={"dataset": "synthetic", "image_size": 16, "channels": 3}))
    imgs = _images(2, 3, 16)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 64, 12)
    # Patch 9 = grid row 1, col 1; values in (row, col, channel) order as the official code.
    assert torch.equal(patches[:, 9], imgs[:, :, 2:4, 2:4].permute(0, 2, 3, 1).reshape(2, 12))
    assert torch.equal(model.unpatchify(patches), imgs)


def test_loss_is_the_targets_loss_of_pred_and_mask(micro) -> None:
    for loss_on in ("masked", "all"):
        model = build_mae(micro(target={"kind": "norm_pixel", "loss_on": loss_on}))
        x = _images(3, 1, 8)
        out = model(x)
        target = model.patchify(x)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((out.pred - target) ** 2).mean(-1)
        want = per_patch[out.mask.bool()].mean() if loss_on == "masked" else per_patch.mean()
        torch.testing.assert_close(out.loss, want)


# ----------------------------------------------------------------------------- masking semantics


@pytest.mark.parametrize("mask_tokens", [False, True])
@pytest.mark.parametrize("sampler", ["random", "block", "grid"])
def test_hidden_pixels_never_reach_the_prediction(micro, mask_tokens: bool, sampler: str) -> None:
    model = build_mae(micro(encoder={"mask_tokens": mask_tokens}, masking={"sampler": sampler}))
    x = _images(3, 1, 8)
    out = model(x, generator=_gen(5))
    noisy = model.patchify(x) + 5.0 * out.mask.unsqueeze(-1)  # change hidden patches only
    again = model(model.unpatchify(noisy), generator=_gen(5))
    assert torch.equal(again.mask, out.mask)
    torch.testing.assert_close(again.pred, out.pred, rtol=0, atol=1e-6)
    assert not torch.allclose(again.loss, out.loss)  # the targets did change


def _sequence_lengths(module: nn.Module, model: MaskedAutoencoder, x: torch.Tensor) -> list[int]:
    seen: list[int] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    model(x)
    handle.remove()
    return seen


@pytest.mark.parametrize("mask_tokens", [False, True])
def test_encoder_sequence_length_with_and_without_mask_tokens(micro, mask_tokens: bool) -> None:
    model = build_mae(micro(encoder={"mask_tokens": mask_tokens}))
    x = _images(2, 1, 8)
    length = 16
    encoder_len = length + 1 if mask_tokens else num_keep(length, 0.75) + 1
    assert _sequence_lengths(model.blocks[0], model, x) == [encoder_len]
    assert _sequence_lengths(model.decoder_blocks[0], model, x) == [length + 1]
    width = model.mask_token.shape[-1]
    assert width == (model.cls_token.shape[-1] if mask_tokens else model.decoder_embed.out_features)


# ----------------------------------------------------------------------------- official details


def _official_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """A direct numpy transcription of the official `get_2d_sincos_pos_embed(cls_token=True)`."""

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float32)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


@pytest.mark.parametrize(("dim", "grid"), [(16, 3), (48, 4), (64, 7)])
def test_pos_embed_matches_the_official_function(dim: int, grid: int) -> None:
    want = torch.from_numpy(_official_pos_embed(dim, grid)).float()
    torch.testing.assert_close(sincos_2d(dim, grid), want, rtol=0, atol=1e-5)
    assert not sincos_2d(dim, grid)[0].any()


def test_model_uses_fixed_sincos_for_encoder_and_decoder(micro) -> None:
    cfg = micro()
    model = build_mae(cfg)
    torch.testing.assert_close(model.pos_embed[0], sincos_2d(cfg.encoder.width, 4))
    torch.testing.assert_close(model.decoder_pos_embed[0], sincos_2d(cfg.decoder.width, 4))


def test_official_initialisation() -> None:
    model = MaskedAutoencoder(
        img_size=32,
        patch_size=4,
        in_chans=3,
        embed_dim=256,
        depth=2,
        num_heads=4,
        decoder_embed_dim=128,
        decoder_depth=1,
        decoder_num_heads=4,
    )
    for m in model.modules():
        if isinstance(m, nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
            assert m.bias is not None and not m.bias.any()
        if isinstance(m, nn.LayerNorm):
            assert m.eps == 1e-6 and (m.weight == 1).all() and not m.bias.any()
    conv = model.patch_embed.proj.weight
    bound = math.sqrt(6 / (3 * 4 * 4 + 256))  # xavier on the (out, in*p*p) view
    assert conv.abs().max() <= bound and conv.abs().max() > 0.9 * bound
    for token in (model.cls_token, model.mask_token):
        assert 0.015 < token.std() < 0.025 and abs(token.mean()) < 0.01
    assert all(b.attn.qkv.bias is not None for b in model.blocks)


@pytest.mark.parametrize(
    ("preset", "millions"), [("vit_b16", 86), ("vit_l16", 304), ("vit_h14", 632)]
)
def test_encoder_parameter_counts_match_the_paper(preset: str, millions: int) -> None:
    cfg = validate_config(
        {
            "model": {"preset": preset},
            "data": {"dataset": "imagefolder", "image_size": 224, "channels": 3},
        }
    )
    with torch.device("meta"):
        model = build_mae(cfg)
    count = sum(v.numel() for k, v in model.encoder_state_dict().items() if k != "pos_embed")
    assert abs(count / 1e6 - millions) / millions < 0.01, count


def test_matches_huggingface_vitmae_with_the_same_weights_and_noise(micro) -> None:
    """HF's ViTMAE is a port of the official model: same weights + same noise = same output."""
    transformers = pytest.importorskip("transformers")
    cfg = micro(target={"kind": "norm_pixel"})
    model = build_mae(cfg)
    hf_cfg = transformers.ViTMAEConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=192,
        image_size=8,
        patch_size=2,
        num_channels=1,
        decoder_hidden_size=cfg.decoder.width,
        decoder_num_hidden_layers=cfg.decoder.depth,
        decoder_num_attention_heads=cfg.decoder.heads,
        decoder_intermediate_size=4 * cfg.decoder.width,
        layer_norm_eps=1e-6,
        mask_ratio=0.75,
        norm_pix_loss=True,
    )
    hf = transformers.ViTMAEForPreTraining(hf_cfg).eval()
    weights = _to_hf(model.state_dict(), depth=2, decoder_depth=cfg.decoder.depth)
    hf.load_state_dict(weights, strict=True)

    x = _images(4, 1, 8)
    noise = torch.rand(4, 16, generator=_gen(7))  # what RandomSampler draws from this seed
    ours = model(x, generator=_gen(7))
    theirs = hf(pixel_values=x, noise=noise)
    assert torch.equal(ours.mask, theirs.mask) and torch.equal(ours.ids_restore, theirs.ids_restore)
    torch.testing.assert_close(ours.pred, theirs.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-6)


def _to_hf(sd: dict[str, torch.Tensor], depth: int, decoder_depth: int) -> dict[str, torch.Tensor]:
    out = {
        "vit.embeddings.cls_token": sd["cls_token"],
        "vit.embeddings.position_embeddings": sd["pos_embed"],
        "decoder.mask_token": sd["mask_token"],
        "decoder.decoder_pos_embed": sd["decoder_pos_embed"],
    }
    for ours, theirs in [
        ("patch_embed.proj", "vit.embeddings.patch_embeddings.projection"),
        ("norm", "vit.layernorm"),
        ("decoder_embed", "decoder.decoder_embed"),
        ("decoder_norm", "decoder.decoder_norm"),
        ("decoder_pred", "decoder.decoder_pred"),
    ]:
        for leaf in ("weight", "bias"):
            out[f"{theirs}.{leaf}"] = sd[f"{ours}.{leaf}"]
    stacks = [
        ("blocks", "vit.layers", depth),
        ("decoder_blocks", "decoder.decoder_layers", decoder_depth),
    ]
    renames = {
        "attn.proj": "attention.o_proj",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for ours, theirs, n in stacks:
        for i in range(n):
            for leaf in ("weight", "bias"):
                q, k, v = sd[f"{ours}.{i}.attn.qkv.{leaf}"].chunk(3)
                for name, t in zip(("q_proj", "k_proj", "v_proj"), (q, k, v), strict=True):
                    out[f"{theirs}.{i}.attention.{name}.{leaf}"] = t
                for a, b in renames.items():
                    out[f"{theirs}.{i}.{b}.{leaf}"] = sd[f"{ours}.{i}.{a}.{leaf}"]
    return out


# ----------------------------------------------------------------------------- fine-tuning


def _timm_vit(global_pool: str) -> VisionTransformer:
    return VisionTransformer(
        img_size=8,
        patch_size=2,
        in_chans=1,
        num_classes=10,
        global_pool=global_pool,
        embed_dim=48,
        depth=2,
        num_heads=3,
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )


@pytest.mark.parametrize("mask_tokens", [False, True])
def test_encoder_state_dict_loads_into_timm_vit(micro, mask_tokens: bool) -> None:
    model = build_mae(micro(encoder={"mask_tokens": mask_tokens})).eval()
    state = model.encoder_state_dict()
    assert not any(k.startswith(("decoder", "mask_token")) for k in state)

    vit = _timm_vit("token").eval()
    result = vit.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"]
    assert result.unexpected_keys == []
    x = _images(3, 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x)[:, 0], mae_features(model, x, "cls"))
        tokens = vit.forward_features(x)[:, 1:].mean(1)
        torch.testing.assert_close(tokens, mae_features(model, x, "avg"))

    pooled = _timm_vit("avg")  # the official fine-tuning default: mean of patches + fc_norm
    result = pooled.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == [
        "fc_norm.bias",
        "fc_norm.weight",
        "head.bias",
        "head.weight",
    ]
    assert sorted(result.unexpected_keys) == ["norm.bias", "norm.weight"]
