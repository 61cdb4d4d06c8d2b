"""Pre-training throughput: our MAE beside HuggingFace `ViTMAEForPreTraining`, and the speed-up
of an encoder without mask tokens (Table 2) next to its theoretical FLOP ratio (Table 1c).

One training step = forward, loss, backward, AdamW step, on a fixed random batch (data loading is
not measured). The contenders run interleaved in one process: every repetition times each of
them for `--steps` steps, in a rotating order, after `--warmup` discarded repetitions, and the
median over repetitions is reported, so drifting machine load hits all of them alike.

    python benchmarks/throughput.py --configs tiny --threads 1 --clock cpu
    python benchmarks/throughput.py --configs vit_b16 --device cuda --bf16 --batch 128
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from mae.config import ExperimentConfig, validate_config
from mae.model import build_mae
from mae.model.masking import num_keep

log = logging.getLogger("benchmarks.throughput")

# Geometry of each benchmark config; the target is the normalised pixels of HF's norm_pix_loss.
CONFIGS: dict[str, dict] = {
    "tiny": {"model": {"preset": "vit_tiny_cpu"}, "data": {"dataset": "fashion_mnist"}},
    "vit_b16": {
        "model": {"preset": "vit_b16"},
        "data": {"dataset": "imagefolder", "image_size": 224, "channels": 3},
    },
}
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
DEFAULT_BATCH = {
    ("tiny", "cpu"): 256,
    ("tiny", "cuda"): 1024,
    ("vit_b16", "cpu"): 4,
    ("vit_b16", "cuda"): 128,
}


def experiment(name: str, mask_tokens: bool = False) -> ExperimentConfig:
    tree = {
        **CONFIGS[name],
        "target": {"kind": "norm_pixel"},
        "encoder": {"mask_tokens": mask_tokens},
        "masking": {"ratio": 0.75},
    }
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


def forward_flops(cfg: ExperimentConfig, mask_tokens: bool) -> float:
    """Forward FLOPs per image (2 per multiply-add, matmuls only; a training step is ~3x this).

    A block on n tokens of width d with MLP ratio r costs n * (8 + 4r) d^2 for its projections
    and 4 n^2 d for attention; the encoder sees len_keep + 1 tokens, or L + 1 with mask tokens.
    """
    enc, dec = cfg.encoder, cfg.decoder
    length, patch_dim = cfg.num_patches, enc.patch_size**2 * cfg.image_channels
    n_enc = (length if mask_tokens else num_keep(length, cfg.masking.ratio)) + 1
    n_dec = length + 1

    def blocks(n: int, d: int, depth: int, r: float) -> float:
        return depth * (n * (8 + 4 * r) * d * d + 4 * n * n * d)

    return (
        2 * length * patch_dim * enc.width
        + blocks(n_enc, enc.width, enc.depth, enc.mlp_ratio)
        + 2 * n_enc * enc.width * dec.width
        + blocks(n_dec, dec.width, dec.depth, dec.mlp_ratio)
        + 2 * length * dec.width * patch_dim
    )


@dataclass
class Contender:
    name: str
    model: nn.Module
    loss_of: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def training_step(
    contender: Contender, device: torch.device, bf16: bool
) -> Callable[[torch.Tensor], None]:
    model = contender.model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step(x: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = contender.loss_of(model, x)
        loss.backward()
        opt.step()

    return step


def images_per_second(
    step: Callable[[torch.Tensor], None],
    x: torch.Tensor,
    steps: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    for _ in range(steps):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return x.shape[0] * steps / (clock() - start)


def bench_config(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    cfg = experiment(name)
    batch = args.batch or DEFAULT_BATCH[(name, device.type)]
    contenders = [
        Contender("ours", build_mae(cfg), lambda m, x: m(x).loss),
        Contender("hf", hf_model(cfg), lambda m, x: m(pixel_values=x).loss),
        Contender(
            "ours w/ [M]", build_mae(experiment(name, mask_tokens=True)), lambda m, x: m(x).loss
        ),
    ]
    steps = {c.name: training_step(c, device, args.bf16) for c in contenders}
    x = torch.randn(batch, cfg.image_channels, cfg.image_side, cfg.image_side, device=device)
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for rep in range(args.warmup + args.reps):
        order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
        for c in order:
            rate = images_per_second(steps[c.name], x, args.steps, device, CLOCKS[args.clock])
            if rep >= args.warmup:
                samples[c.name].append(rate)
        log.info("%s rep %d: %s", name, rep, {k: round(v[-1], 1) for k, v in samples.items() if v})

    median = {k: statistics.median(v) for k, v in samples.items()}
    flop_ratio = forward_flops(cfg, True) / forward_flops(cfg, False)
    speedup = median["ours"] / median["ours w/ [M]"]
    common = {
        "config": name,
        "device": str(device),
        "bf16": args.bf16,
        "batch": batch,
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "reps": args.reps,
    }
    rows = [
        {
            **common,
            "contender": k,
            "images_per_s": v,
            "min": min(samples[k]),
            "max": max(samples[k]),
            "vs_hf": v / median["hf"],
            "gflops_fwd_per_image": forward_flops(cfg, k == "ours w/ [M]") / 1e9,
        }
        for k, v in median.items()
    ]
    rows.append(
        {
            **common,
            "contender": "speed-up w/o [M] vs w/ [M]",
            "measured": speedup,
            "flop_ratio": flop_ratio,
            "of_flop_ratio": speedup / flop_ratio,
        }
    )
    return rows


RATE_COLUMNS = [
    "config",
    "batch",
    "clock",
    "contender",
    "images_per_s",
    "min",
    "max",
    "vs_hf",
    "gflops_fwd_per_image",
]
SPEEDUP_COLUMNS = {
    "config": "config",
    "batch": "batch",
    "measured": "speed-up w/o [M] vs w/ [M]",
    "flop_ratio": "FLOP ratio",
    "of_flop_ratio": "speed-up / FLOP ratio",
}


def render(rows: list[dict]) -> str:
    rates = pd.DataFrame([r for r in rows if "images_per_s" in r])[RATE_COLUMNS]
    speed = pd.DataFrame([r for r in rows if "measured" in r])[list(SPEEDUP_COLUMNS)]
    tables = (rates, speed.rename(columns=SPEEDUP_COLUMNS))
    return "\n\n".join(t.to_markdown(index=False, floatfmt=".3g") for t in tables)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,vit_b16", help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--steps", type=int, default=5, help="training steps per timed repetition")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per contender")
    p.add_argument("--warmup", type=int, default=1, help="discarded repetitions first")
    p.add_argument("--batch", type=int, default=None, help="images per step (default per config)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: images per second; cpu: images per CPU-second of this process, which "
        "other jobs on a shared machine cannot slow down (CPU runs only)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configs {sorted(unknown)}; allowed: {', '.join(CONFIGS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures CPU runs only")
    rows = [row for name in args.configs.split(",") for row in bench_config(name, args, device)]
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
