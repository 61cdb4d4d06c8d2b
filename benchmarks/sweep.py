"""Sweep overhead: planning a 1,000-run study, and `make_tables` over a 1,000-run store, each
timed as a user meets it: a fresh process (`studies/run.py ... --dry-run`,
`analysis/make_tables.py`), imports included; best of `--reps`, wall and CPU time."""

from __future__ import annotations

import argparse
import itertools
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param

from benchmarks.common import LoadProbe, Part
from mae.config import TABLE_AXES, ExperimentConfig, flatten_config
from mae.report.definitions import DEFINITIONS, TABLE1_DEFAULTS
from mae.sweep.plan import plan_study
from mae.sweep.scale import load_scale
from mae.sweep.spec import load_study
from mae.track import init_store

ROOT = Path(__file__).resolve().parent.parent
SCALE = "tiny"  # the planned study's scale, so that planning reads the 1,000 runs
RUNS_PER_SEED = 30  # mask_ratio_sweep: 10 pre-trainings, each fine-tuned and probed


def _label_sets() -> list[dict]:
    """Every distinct (stage, labels) a table cell asks for."""
    seen, cells = set(), []
    for definition in DEFINITIONS:
        for row in definition.rows:
            for column in (definition.source(row, c) for c in definition.columns if c.metric):
                wanted = dict(TABLE1_DEFAULTS)
                if column.labelled:
                    wanted = definition.required(row, column.stage)
                key = (column.stage, tuple(sorted((k, str(v)) for k, v in wanted.items())))
                if key not in seen:
                    seen.add(key)
                    cells.append({"stage": column.stage, "labels": wanted})
    return cells


def planned_keys(seeds: list[int]) -> list[str]:
    """The content keys of the planned study, in plan order."""
    spec = load_study("mask_ratio_sweep")
    return [run.key for run in plan_study(spec, load_scale(spec.scale), seeds=seeds).runs]


def build_store(uri: str, runs: int, keys: Sequence[str] = ()) -> None:
    """A SQLite store whose `runs` finished runs fill every table and figure over several seeds,
    each with the full flattened config and the paper labels as params. The first runs carry
    `keys` as content keys, so that planning the study of those keys finds and reads them all
    (as when a study is planned again after it ran)."""
    experiment_id = init_store(uri, SCALE)
    client = mlflow.MlflowClient(uri)
    base = flatten_config(ExperimentConfig())
    rng = random.Random(0)
    now = int(time.time() * 1000)
    plan = ((seed, cell) for seed in itertools.count() for cell in _label_sets())
    for index, (seed, cell) in enumerate(itertools.islice(plan, runs)):
        stage, labels = cell["stage"], cell["labels"]
        params = dict(base)
        params.update({f"label.{a}": str(labels.get(a, TABLE1_DEFAULTS[a])) for a in TABLE_AXES})
        params["pretrain.seed"] = str(seed)
        if "partial.blocks" in labels:
            params["partial.blocks"] = str(float(labels["partial.blocks"]))
        key = keys[index] if index < len(keys) else f"bench-{index}"
        tags = {"content_key": key, "stage": stage, "study": "bench", "scale": SCALE}
        run = client.create_run(
            experiment_id, start_time=now + index, tags=tags, run_name=f"{stage}-{index}"
        )
        name = {"pretrain": "pretrain/wall_time_s"}.get(stage, f"{stage}/top1")
        value = rng.uniform(50, 90)
        metrics = [Metric(f"final/{name}", value, now, 0), Metric(name, value, now, 1)]
        items = [Param(k, v) for k, v in params.items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=items[:100])
        client.log_batch(run.info.run_id, params=items[100:])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=now + index + 60_000)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], reps: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of `command` over `reps` fresh processes."""
    walls, cpus = [], []
    for _ in range(reps):
        cpu, wall = _children_cpu(), time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        walls.append(time.perf_counter() - wall)
        cpus.append(_children_cpu() - cpu)
    return min(walls), min(cpus)


def run_sweep(args: argparse.Namespace) -> Part:
    runs = 6 if args.smallest else args.runs
    seed_list = list(range(math.ceil(runs / RUNS_PER_SEED)))
    seeds = ",".join(map(str, seed_list))
    part = Part("sweep", f"Sweep overhead: planning and tables at about {runs} runs")
    with tempfile.TemporaryDirectory(prefix="mae-bench-sweep-") as tmp, LoadProbe() as probe:
        uri = f"sqlite:///{Path(tmp) / 'mlruns.db'}"
        started = time.perf_counter()
        build_store(uri, runs, planned_keys(seed_list))
        built_s = time.perf_counter() - started
        plan = [sys.executable, "studies/run.py", "mask_ratio_sweep", "--seeds", seeds]
        plan += ["--dry-run", "--tracking-uri", uri]
        tables = [sys.executable, "analysis/make_tables.py", "--scale", SCALE]
        tables += ["--tracking-uri", uri, "--out", str(Path(tmp) / "tables")]
        rows = []
        for what, command, goal in (
            (f"plan mask_ratio_sweep x {len(seeds.split(','))} seeds", plan, 2.0),
            (f"make_tables over {runs} runs", tables, 3.0),
        ):
            wall, cpu = timed(command, args.reps)
            rows.append({"what": what, "best_wall_s": wall, "best_cpu_s": cpu, "goal_s": goal})
    part.load = probe.load
    part.table(rows)
    part.notes.append(f"store of {runs} runs built in {built_s:.1f} s (not part of the figures)")
    return part
