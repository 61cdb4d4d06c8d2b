"""The GPU check (`benchmarks/gpu_check.sh`): our pre-training step in bf16 autocast, eager and
under `torch.compile`, at ViT-B/16 and ViT-L/16 (512x8 decoder, 75% masking); images/s, TFLOP/s
(FLOPs counted by `torch.utils.flop_counter` on the eager model) and MFU against the device's bf16
peak: the datasheet's dense figure where the device is known, and the measured `torch.mm` peak.
`--device cpu --configs micro` is its dry run (the test suite's), with `--compile-backend eager`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import CLOCKS, LoadProbe, Part, interleaved, matmul_peak, median
from benchmarks.step import BATCH, counted_flops, experiment, ours, training_step

# Dense bf16 tensor-core TFLOP/s from the vendors' datasheets (SXM parts).
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def datasheet_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def run_gpu(args: argparse.Namespace) -> Part:
    device = torch.device(args.device)
    clock = CLOCKS["wall"]
    part = Part("gpu", f"Pre-training step, bf16 autocast, eager and compiled ({device})")
    rows = []
    with LoadProbe() as probe:
        measured = matmul_peak(torch.bfloat16, device, args.peak_size, clock=clock) / 1e3
        sheet = datasheet_peak(device)
        for name in args.configs.split(","):
            cfg = experiment(name)
            batch = args.batch or BATCH[device.type][name]
            x = torch.randn(
                batch, cfg.image_channels, cfg.image_side, cfg.image_side, device=device
            )
            eager, compiled = ours("eager", cfg, bf16=True), ours("compiled", cfg, bf16=True)
            compiled.model.load_state_dict(eager.model.state_dict())
            eager.model.to(device)
            flops = counted_flops(eager, x)
            compiled.model = torch.compile(compiled.model, backend=args.compile_backend)
            steps = {c.name: training_step(c, x) for c in (eager, compiled)}
            steps["compiled"]()  # compile outside the timing
            samples = interleaved(steps, args.reps, args.warmup, clock, args.steps, device)
            for variant, s in samples.items():
                tflops = flops / median(s) / 1e12
                rows.append(
                    {
                        "config": name,
                        "batch": batch,
                        "variant": variant,
                        "images_per_s": batch / median(s),
                        "TFLOP/s": tflops,
                        "MFU (datasheet)": tflops / sheet if sheet else None,
                        "MFU (measured mm peak)": tflops / measured,
                    }
                )
    part.load = probe.load
    part.table(rows)
    part.notes.append(
        f"bf16 matmul peak measured {measured:.1f} TFLOP/s; datasheet "
        f"{sheet if sheet else 'unknown for this device'}"
    )
    return part


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--configs", default="vit_b16,vit_l16")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="steps per timed repetition")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-size", type=int, default=8192, help="side of the peak's matrices")
    p.add_argument("--compile-backend", default="inductor")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry for the CPU dry run")
    torch.manual_seed(0)
    print(run_gpu(args).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
