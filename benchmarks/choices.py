"""The measured choices the code makes, each variant against the other in one process:

- AdamW: the per-parameter loop, foreach, fused (`mae.train.optim.adamw` takes fused);
- attention: SDPA's CPU flash kernel against its math backend (training step of ours);
- evaluation: `no_grad` against `inference_mode`, and the batch size (`mae.evaluate.loop`);
- compile (`--compile`, minutes): eager against `torch.compile`, and the compile time.
"""

from __future__ import annotations

import argparse
import time

import torch
from timm.optim import param_groups_weight_decay
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import CLOCKS, LoadProbe, Part, interleaved, median
from benchmarks.step import batch_of, calls, experiment, ours, training_step
from mae.data import dataset_info
from mae.evaluate.classifier import build_classifier
from mae.model import build_mae


def _ratios(samples: dict[str, list[float]], base: str, what: str, config: str) -> list[dict]:
    ref = median(samples[base])
    return [
        {
            "choice": what,
            "config": config,
            "variant": name,
            "ms": median(s) * 1e3,
            "speedup": ref / median(s),
        }
        for name, s in samples.items()
    ]


def adamw_variants(name: str, args: argparse.Namespace) -> list[dict]:
    model = build_mae(experiment(name))
    for p in model.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    steps = {}
    for kind, kw in kinds.items():
        groups = param_groups_weight_decay(model, 0.05)
        steps[kind] = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), **kw).step
    calls = 1 if args.smallest or name != "tiny" else 10
    samples = interleaved(steps, args.reps, args.warmup, CLOCKS[args.clock_used], calls)
    return _ratios(samples, "loop", "AdamW step", name)


def attention_variants(name: str, args: argparse.Namespace) -> list[dict]:
    x = batch_of(name, args, torch.device(args.device))
    step = training_step(ours("ours", experiment(name)), x)

    def math() -> None:
        with sdpa_kernel(SDPBackend.MATH):
            step()

    variants = {"flash (default)": step, "math": math}
    samples = interleaved(
        variants, args.reps, args.warmup, CLOCKS[args.clock_used], calls(name, args)
    )
    return _ratios(samples, "flash (default)", "attention kernel, training step", name)


def eval_variants(name: str, args: argparse.Namespace) -> list[dict]:
    cfg = experiment(name)
    model = build_classifier(cfg, dataset_info(cfg, "finetune"), pool="avg").eval()
    images = torch.randn(args.eval_images, cfg.image_channels, cfg.image_side, cfg.image_side)

    def run(batch: int, mode) -> None:
        with mode():
            for chunk in images.split(batch):
                model(chunk)

    base = 128 if not args.smallest else 4
    variants = {
        f"no_grad, batch {base}": lambda: run(base, torch.no_grad),
        f"inference_mode, batch {base}": lambda: run(base, torch.inference_mode),
        f"inference_mode, batch {base * 8}": lambda: run(base * 8, torch.inference_mode),
    }
    samples = interleaved(variants, args.reps, args.warmup, CLOCKS[args.clock_used])
    return _ratios(samples, f"no_grad, batch {base}", f"evaluate {args.eval_images} images", name)


def compile_variants(name: str, args: argparse.Namespace) -> list[dict]:
    x = batch_of(name, args, torch.device(args.device))
    eager = training_step(ours("eager", experiment(name)), x)
    contender = ours("compiled", experiment(name))
    contender.model = torch.compile(contender.model)
    compiled = training_step(contender, x)
    start = time.perf_counter()
    compiled()
    compiled()
    compile_s = time.perf_counter() - start
    variants = {"eager": eager, "compiled": compiled}
    samples = interleaved(
        variants, args.reps, args.warmup, CLOCKS[args.clock_used], calls(name, args)
    )
    rows = _ratios(samples, "eager", "torch.compile, training step", name)
    rows[1]["compile_wall_s"] = compile_s
    return rows


def run_choices(args: argparse.Namespace) -> Part:
    part = Part("choices", "Measured choices: each variant against the first, one process")
    rows = []
    with LoadProbe() as probe:
        for name in args.step_configs:
            rows += adamw_variants(name, args)
            rows += attention_variants(name, args)
            if name in ("micro", "tiny"):  # evaluation at ViT-B on one CPU thread: not a use
                rows += eval_variants(name, args)
            if args.compile:
                rows += compile_variants(name, args)
    part.load = probe.load
    part.table(rows)
    if not args.compile:
        part.notes.append("torch.compile not measured (add --compile: minutes of compiling)")
    return part
