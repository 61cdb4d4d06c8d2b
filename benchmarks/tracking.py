"""Tracking overhead: a pre-training with MLflow logging into a temporary SQLite store (as a job
logs: per-epoch metrics through `ProgressFile`) against the same pre-training with no logger,
interleaved; steps/s of each and their ratio, by wall time (SQLite waits on the disk) and by CPU
time (steadier on a shared machine). Whole runs vary by several percent from one to the next, so
the difference of two medians can hide a small overhead or invent one: the time spent inside the
logger's own calls is also clocked directly (`TimedLogger`) and reported as a share of the run.
Opening and closing the run is in `startup`."""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from benchmarks.common import LoadProbe, Part, median
from mae import track
from mae.config import ExperimentConfig, flatten_config, validate_config
from mae.data import pretrain_set
from mae.jobs import ProgressFile
from mae.logger import MetricLogger, NullLogger
from mae.overrides import apply_overrides
from mae.sweep.scale import load_scale
from mae.train.pretrain import pretrain


class TimedLogger:
    """Passes every call on and adds up the wall and CPU seconds spent inside them."""

    def __init__(self, inner: MetricLogger):
        self.inner, self.wall_s, self.cpu_s = inner, 0.0, 0.0

    def _timed(self, call, *args) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        call(*args)
        self.wall_s += time.perf_counter() - wall
        self.cpu_s += time.process_time() - cpu

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._timed(self.inner.log_metrics, metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._timed(self.inner.log_artifact, path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._timed(self.inner.set_tags, tags)


class Runs:
    """Fresh pre-trainings of one config in a temporary folder, tracked or not."""

    def __init__(self, cfg: ExperimentConfig, root: Path):
        self.cfg, self.root, self.count = cfg, root, itertools.count()
        self.uri = f"sqlite:///{root / 'mlruns.db'}"
        self.experiment = track.init_store(self.uri, "bench")

    def logger(self, name: str, workdir: Path) -> TimedLogger:
        run_id = track.open_run(
            self.uri,
            self.experiment,
            key=name,
            stage="pretrain",
            run_name=name,
            params=flatten_config(self.cfg),
            tags={},
            parent_run_id=None,
            run_id=None,
        )
        return TimedLogger(ProgressFile(track.MlflowLogger(self.uri, run_id), workdir))

    def run(self, tracked: bool) -> tuple[float, float, float, float]:
        """(wall s, CPU s) of one whole pre-training, then (wall s, CPU s) inside the logger."""
        name = f"run{next(self.count)}"
        workdir = self.root / name
        workdir.mkdir()
        logger = self.logger(name, workdir) if tracked else TimedLogger(NullLogger())
        wall, cpu = time.perf_counter(), time.process_time()
        pretrain(self.cfg, workdir, logger)
        return time.perf_counter() - wall, time.process_time() - cpu, logger.wall_s, logger.cpu_s


def run_tracking(args: argparse.Namespace) -> Part:
    scale = "micro" if args.smallest else "tiny"
    epochs = 1 if args.smallest else 3
    overrides = {"pretrain.epochs": epochs, "pretrain.warmup_epochs": 1, "runtime.recon_images": 0}
    cfg = validate_config(apply_overrides(load_scale(scale).config, overrides), source=scale)
    part = Part("tracking", f"Tracking overhead: pre-training with and without MLflow ({scale})")
    root = Path(tempfile.mkdtemp(prefix="mae-bench-tracking-"))
    samples: dict[bool, list[tuple[float, float, float, float]]] = {False: [], True: []}
    try:
        with LoadProbe() as probe:
            runs = Runs(cfg, root)
            for rep in range(args.warmup + args.reps):
                for tracked in (rep % 2 == 0, rep % 2 == 1):
                    timing = runs.run(tracked)
                    if rep >= args.warmup:
                        samples[tracked].append(timing)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    part.load = probe.load
    steps = epochs * (len(pretrain_set(cfg)) // cfg.pretrain.batch_size)
    row = {"scale": scale, "epochs": epochs, "steps": steps}
    for i, clock in enumerate(("wall", "cpu")):
        bare = median([s[i] for s in samples[False]])
        tracked = median([s[i] for s in samples[True]])
        row[f"no_logger_steps_per_s_{clock}"] = steps / bare
        row[f"mlflow_steps_per_s_{clock}"] = steps / tracked
        row[f"overhead_{clock}"] = tracked / bare - 1
        runs_s = [s[i] for s in samples[True] + samples[False]]
        row[f"run_spread_{clock}"] = (max(runs_s) - min(runs_s)) / median(runs_s)
        row[f"inside_logger_{clock}"] = median([s[2 + i] / s[i] for s in samples[True]])
    part.table([row])
    part.notes.append(
        "whole pre-trainings, a checkpoint per epoch in both; run_spread: (max - min) / median "
        "of all runs' times, the noise the A/B overhead sits in; inside_logger: the share of a "
        "tracked run spent inside the logger's calls, clocked directly (the overhead proper)"
    )
    return part
