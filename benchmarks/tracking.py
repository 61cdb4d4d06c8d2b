"""Tracking overhead: a pre-training with MLflow logging into a temporary SQLite store (as a job
logs: per-epoch metrics through `ProgressFile`) against the same pre-training with no logger,
interleaved; steps/s of each and their ratio, by wall time (SQLite waits on the disk) and by CPU
time (steadier on a shared machine). Opening and closing the run is in `startup`."""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
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


class Runs:
    """Fresh pre-trainings of one config in a temporary folder, tracked or not."""

    def __init__(self, cfg: ExperimentConfig, root: Path):
        self.cfg, self.root, self.count = cfg, root, itertools.count()
        self.uri = f"sqlite:///{root / 'mlruns.db'}"
        self.experiment = track.init_store(self.uri, "bench")

    def logger(self, name: str, workdir: Path) -> MetricLogger:
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
        return ProgressFile(track.MlflowLogger(self.uri, run_id), workdir)

    def run(self, tracked: bool) -> tuple[float, float]:
        """(wall s, CPU s) of one whole pre-training."""
        name = f"run{next(self.count)}"
        workdir = self.root / name
        workdir.mkdir()
        logger = self.logger(name, workdir) if tracked else NullLogger()
        wall, cpu = time.perf_counter(), time.process_time()
        pretrain(self.cfg, workdir, logger)
        return time.perf_counter() - wall, time.process_time() - cpu


def run_tracking(args: argparse.Namespace) -> Part:
    scale = "micro" if args.smallest else "tiny"
    epochs = 1 if args.smallest else 3
    overrides = {"pretrain.epochs": epochs, "pretrain.warmup_epochs": 1, "runtime.recon_images": 0}
    cfg = validate_config(apply_overrides(load_scale(scale).config, overrides), source=scale)
    part = Part("tracking", f"Tracking overhead: pre-training with and without MLflow ({scale})")
    root = Path(tempfile.mkdtemp(prefix="mae-bench-tracking-"))
    samples: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
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
    part.table([row])
    part.notes.append("whole pre-trainings, a checkpoint per epoch in both")
    return part
