"""`python -m benchmarks [--only PARTS] [--smallest]`: run the benchmarks, print their tables and
write them to `<out>/report.md` (and each part's rows to `<out>/<part>.json`).

Parts, in order: step, asymmetry, profile, choices, loader, tracking, startup, sweep (all by
default) and e2e (tens of minutes: only when named). `--smallest` runs every part at its smallest
size, in seconds: `make test` does, so that none of them rots.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.choices import run_choices
from benchmarks.common import Part, clock_name
from benchmarks.e2e import run_e2e
from benchmarks.loader import run_loader
from benchmarks.profiling import run_profile
from benchmarks.startup import run_startup
from benchmarks.step import CONFIGS, run_asymmetry, run_step
from benchmarks.sweep import run_sweep
from benchmarks.tracking import run_tracking

PARTS: dict[str, Callable[[argparse.Namespace], Part]] = {
    "step": run_step,
    "asymmetry": run_asymmetry,
    "profile": run_profile,
    "choices": run_choices,
    "loader": run_loader,
    "tracking": run_tracking,
    "startup": run_startup,
    "sweep": run_sweep,
    "e2e": run_e2e,
}
DEFAULT_PARTS = [p for p in PARTS if p != "e2e"]
OUT = Path(__file__).resolve().parent / "out"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--only", help=f"comma list of: {', '.join(PARTS)} (default: all but e2e)")
    p.add_argument("--smallest", action="store_true", help="every part at its smallest size")
    p.add_argument("--configs", help=f"step configs, comma list of: {', '.join(CONFIGS)}")
    p.add_argument("--decoder-depths", default="8,1", help="asymmetry: decoder depths")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the tiny recipe: 1)")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="discarded repetitions (default 1)")
    p.add_argument("--steps", type=int, default=None, help="steps per repetition (per config)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default per config)")
    p.add_argument("--bf16", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--compile", action="store_true", help="choices: also time torch.compile")
    p.add_argument("--runs", type=int, default=1000, help="sweep: runs to plan and report")
    p.add_argument("--e2e-studies", default="demo,mask_ratio_sweep")
    p.add_argument("--eval-images", type=int, default=None, help="choices: images evaluated")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.parts = args.only.split(",") if args.only else DEFAULT_PARTS
    if unknown := set(args.parts) - set(PARTS):
        p.error(f"unknown parts {sorted(unknown)}; allowed: {', '.join(PARTS)}")
    small = args.smallest
    args.step_configs = (args.configs or ("micro" if small else "tiny,vit_b16")).split(",")
    if unknown := set(args.step_configs) - set(CONFIGS):
        p.error(f"unknown configs {sorted(unknown)}; allowed: {', '.join(CONFIGS)}")
    args.decoder_depths = [1] if small else [int(d) for d in args.decoder_depths.split(",")]
    args.reps = args.reps or (1 if small else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if small else 1)
    args.steps = args.steps or (1 if small else None)
    args.batch = args.batch or (2 if small else None)
    args.eval_images = args.eval_images or (8 if small else 1024)
    args.e2e_studies = args.e2e_studies.split(",")
    args.clock_used = clock_name(args.clock, args.threads, torch.device(args.device).type)
    return args


def header(args: argparse.Namespace, argv: list[str]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return "\n".join(
        [
            "# mae-ablate benchmarks",
            "",
            f"- command: `python -m benchmarks {' '.join(argv)}`",
            f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"- machine: {cpu}, {torch.get_num_threads()} torch thread(s) of "
            f"{__import__('os').cpu_count()} cores; torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
            f"- device {args.device}, clock {args.clock_used}",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = [header(args, argv)]
    print(sections[0], flush=True)
    for name in args.parts:
        part = PARTS[name](args)
        sections.append(part.markdown())
        print(sections[-1], flush=True)
        rows = {"rows": part.rows, "load": part.load.as_dict() if part.load else None}
        (args.out / f"{name}.json").write_text(json.dumps(rows, indent=2, default=str))
    (args.out / "report.md").write_text("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
