"""Pre-training step: ours beside HuggingFace `ViTMAEForPreTraining`, achieved GFLOP/s beside the
machine's own matmul peak, and the asymmetric speed-up of an encoder without mask tokens.

One training step = forward, loss, backward, AdamW step (fused, each library's default: ours in
`mae.train.optim`, HF's Trainer for torch >= 2.8), on a fixed random batch (data loading is the
`loader` part). FLOPs are counted by `torch.utils.flop_counter` on one forward + backward of each
contender (CPU flash attention included), so GFLOP/s = counted FLOPs / measured time.

The official `models_mae.py` is not a contender: it ships in no pip package (only as a GitHub
repository), and nothing is fetched at run time.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import flop_counter

from benchmarks.common import (
    CLOCKS,
    LoadProbe,
    Part,
    interleaved,
    matmul_peak,
    median,
    native_bf16,
)
from mae.config import ExperimentConfig, validate_config
from mae.model import build_mae
from mae.train.optim import adamw

_IMAGENET = {"dataset": "imagefolder", "image_size": 224, "channels": 3}
# The benchmark configs: tiny is the tiny scale's model (studies/scales/tiny.yaml).
CONFIGS: dict[str, dict] = {
    "micro": {"model": {"preset": "vit_micro_cpu"}, "data": {"dataset": "digits"}},
    "tiny": {
        "model": {"preset": "vit_tiny_cpu"},
        "decoder": {"width": 48, "depth": 2, "heads": 4},
        "data": {"dataset": "fashion_mnist"},
    },
    "vit_b16": {"model": {"preset": "vit_b16"}, "data": _IMAGENET},
    "vit_l16": {"model": {"preset": "vit_l16"}, "data": _IMAGENET},
}
BATCH = {"cpu": {"micro": 8, "tiny": 128, "vit_b16": 4, "vit_l16": 2}}
BATCH["cuda"] = {"micro": 256, "tiny": 1024, "vit_b16": 128, "vit_l16": 64}
STEPS = {"micro": 1, "tiny": 5, "vit_b16": 1, "vit_l16": 1}  # timed steps per repetition (CPU)

_aten = torch.ops.aten


def _sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _sdpa_backward(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad, q, k, v)


# torch counts the GPU attention kernels but not the CPU one.
CPU_ATTENTION_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
}


def experiment(
    name: str, mask_tokens: bool = False, decoder_depth: int | None = None
) -> ExperimentConfig:
    """The config `name` with normalised-pixel targets (HF's norm_pix_loss) and 75% masking."""
    tree = {
        **CONFIGS[name],
        "target": {"kind": "norm_pixel"},
        "encoder": {"mask_tokens": mask_tokens},
        "masking": {"ratio": 0.75},
    }
    if decoder_depth is not None:
        tree["decoder"] = {**tree.get("decoder", {}), "depth": decoder_depth}
    return validate_config(tree, source=f"benchmark config {name}")


def hf_model(cfg: ExperimentConfig) -> nn.Module:
    """`ViTMAEForPreTraining` at the same sizes (built from a config: nothing is downloaded)."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    enc, dec = cfg.encoder, cfg.decoder
    hf_cfg = ViTMAEConfig(
        hidden_size=enc.width,
        num_hidden_layers=enc.depth,
        num_attention_heads=enc.heads,
        intermediate_size=int(enc.width * enc.mlp_ratio),
        image_size=cfg.image_side,
        patch_size=enc.patch_size,
        num_channels=cfg.image_channels,
        decoder_hidden_size=dec.width,
        decoder_num_hidden_layers=dec.depth,
        decoder_num_attention_heads=dec.heads,
        decoder_intermediate_size=int(dec.width * dec.mlp_ratio),
        mask_ratio=cfg.masking.ratio,
        norm_pix_loss=True,
        layer_norm_eps=1e-6,
        attn_implementation="sdpa",
    )
    return ViTMAEForPreTraining(hf_cfg)


@dataclass
class Contender:
    name: str
    model: nn.Module
    loss_of: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    bf16: bool = False


def ours(name: str, cfg: ExperimentConfig, bf16: bool = False) -> Contender:
    return Contender(name, build_mae(cfg), lambda m, x: m(x).loss, bf16)


def hf(name: str, cfg: ExperimentConfig, bf16: bool = False) -> Contender:
    return Contender(name, hf_model(cfg), lambda m, x: m(pixel_values=x).loss, bf16)


def training_step(contender: Contender, x: torch.Tensor) -> Callable[[], None]:
    model = contender.model.to(x.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw([{"params": params, "weight_decay": 0.05}], 1.5e-4, (0.9, 0.95))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=contender.bf16):
            loss = contender.loss_of(model, x)
        loss.backward()
        optimizer.step()

    return step


def counted_flops(contender: Contender, x: torch.Tensor) -> int:
    """FLOPs of one forward + backward (the optimizer's are negligible and not counted)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as count:
        contender.loss_of(contender.model, x).backward()
    contender.model.zero_grad(set_to_none=True)
    return count.get_total_flops()


def calls(name: str, args: argparse.Namespace) -> int:
    """Steps per timed repetition: `--steps`, else enough for a second or so on the CPU."""
    return args.steps or (STEPS[name] if args.device == "cpu" else 10)


def measure(
    contenders: list[Contender], x: torch.Tensor, args: argparse.Namespace, name: str
) -> dict[str, dict[str, float]]:
    """Images/s (median over interleaved repetitions) and GFLOP/s of every contender."""
    flops = {c.name: counted_flops(c, x) for c in contenders}
    steps = {c.name: training_step(c, x) for c in contenders}
    clock = CLOCKS[args.clock_used]
    samples = interleaved(steps, args.reps, args.warmup, clock, calls(name, args), x.device)
    out = {}
    for c in contenders:
        seconds = median(samples[c.name])
        out[c.name] = {
            "images_per_s": x.shape[0] / seconds,
            "min": x.shape[0] / max(samples[c.name]),
            "max": x.shape[0] / min(samples[c.name]),
            "gflops_per_step": flops[c.name] / 1e9,
            "gflop_per_s": flops[c.name] / seconds / 1e9,
        }
    return out


def batch_of(name: str, args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    cfg = experiment(name)
    batch = args.batch or BATCH[device.type][name]
    side = cfg.image_side
    return torch.randn(batch, cfg.image_channels, side, side, device=device)


def peaks(args: argparse.Namespace, device: torch.device) -> dict[str, float | None]:
    """The machine's matmul GFLOP/s on these threads: fp32 always, bf16 where it is native (on a
    CPU without AVX-512 BF16 it is emulated and not a limit of anything)."""
    clock = CLOCKS[args.clock_used]
    size = 256 if args.smallest else 1024
    fp32 = matmul_peak(torch.float32, device, size, clock=clock)
    has_bf16 = device.type == "cuda" or native_bf16() or args.bf16 == "always"
    bf16 = matmul_peak(torch.bfloat16, device, size, clock=clock) if has_bf16 else None
    return {"fp32": fp32, "bf16": bf16}


def run_step(args: argparse.Namespace) -> Part:
    """Ours vs HF per config, fp32 (and bf16 where native), as fractions of the matmul peak."""
    device = torch.device(args.device)
    part = Part("step", "Pre-training step: ours vs HuggingFace ViTMAE")
    with LoadProbe() as probe:
        peak = peaks(args, device)
        rows = []
        for name in args.step_configs:
            cfg, x = experiment(name), batch_of(name, args, device)
            contenders = [ours("ours", cfg), hf("hf", cfg)]
            if peak["bf16"] is not None and args.bf16 != "never":
                contenders += [ours("ours bf16", cfg, bf16=True), hf("hf bf16", cfg, bf16=True)]
            rates = measure(contenders, x, args, name)
            for c in contenders:
                r = rates[c.name]
                limit = peak["bf16"] if c.bf16 else peak["fp32"]
                rows.append(
                    {
                        "config": name,
                        "batch": x.shape[0],
                        "contender": c.name,
                        **r,
                        "vs_hf_fp32": r["images_per_s"] / rates["hf"]["images_per_s"],
                        "of_peak": r["gflop_per_s"] / limit,
                    }
                )
    part.load = probe.load
    part.table(rows, STEP_COLUMNS)
    bf16 = f"{peak['bf16']:.1f}" if peak["bf16"] else "not native here, not measured"
    part.notes.append(
        f"matmul peak on {torch.get_num_threads()} thread(s), clock {args.clock_used}: "
        f"fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {bf16}"
    )
    part.rows.append({"peak_fp32_gflop_per_s": peak["fp32"], "peak_bf16_gflop_per_s": peak["bf16"]})
    return part


STEP_COLUMNS = {
    "config": "config",
    "batch": "batch",
    "contender": "contender",
    "images_per_s": "img/s",
    "min": "min",
    "max": "max",
    "vs_hf_fp32": "vs hf fp32",
    "gflop_per_s": "GFLOP/s",
    "of_peak": "of matmul peak",
}


def run_asymmetry(args: argparse.Namespace) -> Part:
    """Speed-up of the encoder without mask tokens over one with them (75% masking), decoder
    depth 8 and 1, beside the ratio of their counted FLOPs (Table 2's claim)."""
    device = torch.device(args.device)
    part = Part("asymmetry", "Asymmetric speed-up: encoder w/o [M] vs w/ [M], 75% masking")
    rows = []
    with LoadProbe() as probe:
        for name in args.step_configs:
            x = batch_of(name, args, device)
            for depth in args.decoder_depths:
                pair = [
                    ours("w/o [M]", experiment(name, False, depth)),
                    ours("w/ [M]", experiment(name, True, depth)),
                ]
                rates = measure(pair, x, args, name)
                without, with_m = rates["w/o [M]"], rates["w/ [M]"]
                speedup = without["images_per_s"] / with_m["images_per_s"]
                flop_ratio = with_m["gflops_per_step"] / without["gflops_per_step"]
                rows.append(
                    {
                        "config": name,
                        "decoder_depth": depth,
                        "batch": x.shape[0],
                        "w/o [M] img/s": without["images_per_s"],
                        "w/ [M] img/s": with_m["images_per_s"],
                        "speedup": speedup,
                        "flop_ratio": flop_ratio,
                        "of_flop_ratio": speedup / flop_ratio,
                    }
                )
    part.load = probe.load
    part.table(rows)
    part.notes.append("FLOP ratio: forward + backward FLOPs counted by torch.utils.flop_counter")
    return part
