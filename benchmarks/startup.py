"""Job start-up: seconds from a job's process start to its first training step, in phases, as a
sweep pays them for every run: the interpreter, imports, the store look-up and run opening
(`StageJob._open_run` into a temporary SQLite store), model and data, the first step's forward.

Each repetition starts a fresh `python` that runs a real pre-training job (`mae.jobs.StageJob`)
and stops it at its first forward pass."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import LoadProbe, Part, median
from mae import track
from mae.config import pretrain_key, validate_config
from mae.jobs import JobSpec
from mae.overrides import apply_overrides
from mae.sweep.scale import load_scale

CHILD = """
import json, sys, time
marks = {"python": time.time()}
import mae.jobs as jobs, mae.train.pretrain as pretrain
from mae.model import MaskedAutoencoder
marks["imports"] = time.time()

class FirstStep(Exception):
    pass

def after(owner, name, mark):
    inner = getattr(owner, name)
    def wrapper(*args, **kwargs):
        out = inner(*args, **kwargs)
        marks.setdefault(mark, time.time())
        return out
    setattr(owner, name, staticmethod(wrapper) if owner is jobs.StageJob else wrapper)

def first_forward(self, *args, **kwargs):
    marks["first step"] = time.time()
    raise FirstStep

after(jobs.StageJob, "_open_run", "store")
after(pretrain, "pretrain_set", "model and data")
MaskedAutoencoder.forward = first_forward
spec = jobs.JobSpec(**json.loads(open(sys.argv[1]).read()))
try:
    jobs.StageJob()(spec)
except FirstStep:
    pass
open(sys.argv[2], "w").write(json.dumps(marks))
"""
PHASES = ("python", "imports", "store", "model and data", "first step")


def job_spec(scale: str, root: Path) -> JobSpec:
    cfg = validate_config(apply_overrides(load_scale(scale).config, {"runtime.recon_images": 0}))
    uri = f"sqlite:///{root / 'mlruns.db'}"
    experiment = track.init_store(uri, scale)  # the launcher does this once, before any job
    key = pretrain_key(cfg)
    return JobSpec(
        key=key,
        stage="pretrain",
        config=cfg.model_dump(mode="json"),
        name="startup",
        study="bench",
        scale=scale,
        tracking_uri=uri,
        experiment_id=experiment,
        workdir=str(root / "run"),
    )


def one_start(spec_path: Path, root: Path) -> dict[str, float]:
    """Seconds from launching `python` to each phase's end (cumulative), and the CPU seconds
    the whole process used (it stops at the first step)."""
    out = root / "marks.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CI": "1"}
    cpu, start = _children_cpu(), time.time()
    subprocess.run([sys.executable, "-c", CHILD, str(spec_path), str(out)], env=env, check=True)
    marks = json.loads(out.read_text())
    return {**{phase: marks[phase] - start for phase in PHASES}, "cpu": _children_cpu() - cpu}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_startup(args: argparse.Namespace) -> Part:
    scale = "micro" if args.smallest else "tiny"
    part = Part("startup", f"Job start-up: process start to first training step ({scale})")
    samples: dict[str, list[float]] = {phase: [] for phase in (*PHASES, "cpu")}
    with tempfile.TemporaryDirectory(prefix="mae-bench-startup-") as tmp, LoadProbe() as probe:
        root = Path(tmp)
        spec_path = root / "spec.json"
        spec_path.write_text(json.dumps(asdict(job_spec(scale, root))))
        for _ in range(args.reps):
            for phase, seconds in one_start(spec_path, root).items():
                samples[phase].append(seconds)
    part.load = probe.load
    cumulative = {phase: median(s) for phase, s in samples.items()}
    rows, before = [], 0.0
    for phase in PHASES:
        rows.append(
            {"phase": phase, "s": cumulative[phase] - before, "cumulative_s": cumulative[phase]}
        )
        before = cumulative[phase]
    part.table(rows)
    part.notes.append(
        f"median of {args.reps} fresh processes; wall clock. CPU time of the whole process to "
        f"its first step: {cumulative['cpu']:.1f} s (on a busy machine the better guide)"
    )
    return part
