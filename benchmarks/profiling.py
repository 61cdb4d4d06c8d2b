"""A `torch.profiler` profile of training steps of ours, top ops by self time, written to
`<out>/profile-<config>.txt` (the same table is in the report): optimisation follows evidence."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import LoadProbe, Part
from benchmarks.step import batch_of, calls, experiment, ours, training_step

TOP = 15


def profile_config(name: str, args: argparse.Namespace, out: Path) -> list[dict]:
    device = torch.device(args.device)
    x = batch_of(name, args, device)
    step = training_step(ours("ours", experiment(name)), x)
    step()  # warm-up outside the profile
    steps = calls(name, args)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    out.write_text(averages.table(sort_by=sort, row_limit=40))
    total = sum(e.self_cpu_time_total for e in averages) or 1
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP]
    return [
        {
            "config": name,
            "op": e.key,
            "calls_per_step": e.count / steps,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "self_share": e.self_cpu_time_total / total,
        }
        for e in top
    ]


def run_profile(args: argparse.Namespace) -> Part:
    part = Part("profile", "Profile of a training step (self CPU time, wall clock)")
    rows = []
    with LoadProbe() as probe:
        for name in args.step_configs:
            path = args.out / f"profile-{name}.txt"
            rows += profile_config(name, args, path)
            part.notes.append(f"{name}: full table in {path}")
    part.load = probe.load
    part.table(rows)
    return part
