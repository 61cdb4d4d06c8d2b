"""The data loader alone against the training step it feeds, at the scale's recipe (tiny:
Fashion-MNIST 5,000 images, crop_rand, batch 128). With `runtime.num_workers` 0 (the tiny
default) loading runs in the training thread, so its share of the epoch is what it costs."""

from __future__ import annotations

import argparse
import itertools

from benchmarks.common import CLOCKS, LoadProbe, Part, interleaved, median
from benchmarks.step import Contender, training_step
from mae.config import validate_config
from mae.data import make_loader, pretrain_set
from mae.model import build_mae
from mae.sweep.scale import load_scale


def run_loader(args: argparse.Namespace) -> Part:
    scale = "micro" if args.smallest else "tiny"
    cfg = validate_config(load_scale(scale).config, source=f"scale {scale}")
    batch, batches = cfg.pretrain.batch_size, 2 if args.smallest else 10
    part = Part("loader", f"Data loader alone vs the training step ({scale} recipe)")
    with LoadProbe() as probe:
        dataset = pretrain_set(cfg)
        loader = make_loader(dataset, batch, True, 0, 0, cfg.runtime.num_workers, drop_last=True)
        stream = itertools.cycle(loader)
        x = next(stream)[0]
        step = training_step(Contender("ours", build_mae(cfg), lambda m, x: m(x).loss), x)
        variants = {"loader": lambda: next(stream), "step": step}
        clock = CLOCKS[args.clock_used]
        samples = interleaved(variants, args.reps, args.warmup, clock, batches)
    part.load = probe.load
    load_s, step_s = median(samples["loader"]), median(samples["step"])
    part.table(
        [
            {
                "scale": scale,
                "batch": batch,
                "workers": cfg.runtime.num_workers,
                "loader_img_per_s": batch / load_s,
                "step_img_per_s": batch / step_s,
                "loader_share_of_epoch": load_s / (load_s + step_s),
            }
        ]
    )
    return part
