"""End to end: `make demo` (the demo study, then Fig. 5's table) and the 10-ratio tiny
`mask_ratio_sweep`, each into a fresh temporary store and runs folder, so nothing is reused from
earlier runs; wall time and the CPU time of all its processes. Not in the default set (tens of
minutes): `python -m benchmarks --only e2e`. `--smallest` runs the demo at the micro scale, one
seed and one epoch per stage (4 jobs: a test's seconds, each job paying a Python start-up)."""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import LoadProbe, Part

ROOT = Path(__file__).resolve().parent.parent
SMALLEST = ["--scale", "micro", "--seeds", "0"]
for setting in ("pretrain.epochs=1", "finetune.epochs=1", "linprobe.epochs=1"):
    SMALLEST += ["--set", setting]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def commands(study: str, tmp: Path, smallest: bool) -> list[list[str]]:
    store = ["--tracking-uri", f"sqlite:///{tmp / 'mlruns.db'}"]
    run = [sys.executable, "studies/run.py", study, *store, "--runs-dir", str(tmp / "runs")]
    run += SMALLEST if smallest else []
    if study != "demo":
        return [run]
    tables = [sys.executable, "analysis/make_tables.py", "--only", "fig5", *store]
    tables += ["--out", str(tmp / "out"), *(["--scale", "micro"] if smallest else [])]
    return [run, tables]


def run_e2e(args: argparse.Namespace) -> Part:
    part = Part("e2e", "End to end: make demo and the tiny mask_ratio_sweep")
    studies = ["demo"] if args.smallest else args.e2e_studies
    rows = []
    with LoadProbe() as probe:
        for study in studies:
            with tempfile.TemporaryDirectory(prefix=f"mae-bench-{study}-") as tmp:
                cpu, wall = _children_cpu(), time.perf_counter()
                for command in commands(study, Path(tmp), args.smallest):
                    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
                rows.append(
                    {
                        "study": study,
                        "wall_min": (time.perf_counter() - wall) / 60,
                        "cpu_min": (_children_cpu() - cpu) / 60,
                        "goal_min": {"demo": 15, "mask_ratio_sweep": 45}.get(study),
                    }
                )
    part.load = probe.load
    part.table(rows)
    part.notes.append("CPU time: every process of the study (jobs included); wall: the command")
    return part
