"""Cluster profiles: `slurm/<name>.yaml` says where and with what resources a study's job arrays
run, and how each stage's array is rendered as sbatch parameters (submitit's Slurm names).

A job of several tasks (`nodes` x `tasks_per_node`) runs its stage as DDP, pre-training and every
evaluation alike, the config's `batch_size` being the global batch split over the tasks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

# Private helpers of submitit 1.5.4 (pinned in pyproject.toml): the memory conversion and the
# sbatch script renderer that its SlurmExecutor uses, so a dry run shows exactly what is submitted.
from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

from mae.config import EVAL_STAGES, ExperimentConfig, Stage
from mae.paths import project_root
from mae.schema import ConfigError, Schema, YamlFile, load_model, resolve_named

IN_PROCESS = ("local", "debug")  # clusters that are not profiles: a local queue, this process


class StageResources(Schema):
    """What one stage asks for instead of the profile's defaults (e.g. evaluations on one node)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    tasks_per_node: int | None = Field(None, ge=1)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int | None = Field(None, ge=1)


class SlurmProfile(YamlFile):
    """One `slurm/<name>.yaml`: where and with what resources the arrays of a study run.

    One task per GPU (`tasks_per_node` defaults to `gpus_per_node`, at least 1); on CPU nodes
    `tasks_per_node` sets the processes. A job of several tasks runs DDP through submitit's
    TorchDistributedEnvironment.
    """

    description: str = ""
    job_dir: str  # submitit's folder for pickles and logs: must be shared with the nodes
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int | None = Field(None, ge=1)  # None: one per GPU, or 1 without GPUs
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float = Field(4, gt=0)
    timeout_min: int = Field(60, ge=1)
    signal_delay_s: int = Field(120, ge=0)  # USR2 this long before the time limit: checkpoint
    max_num_timeout: int = Field(30, ge=0)  # requeues after timeouts (preemptions: unlimited)
    array_parallelism: int = Field(256, ge=1)
    setup: list[str] = []  # shell lines before srun (modules, venv activation)
    python: str | None = None  # the interpreter command on the nodes; default: this one
    additional_parameters: dict[str, str | int | bool] = {}  # extra #SBATCH flags
    stages: dict[Stage, StageResources] = {}

    def resources(self, stage: str) -> dict[str, Any]:
        """The profile's resources with the stage's overrides applied."""
        base = {k: getattr(self, k) for k in StageResources.model_fields}
        override = self.stages.get(stage)
        if override is not None:
            base.update(override.model_dump(exclude_none=True))
        if base["tasks_per_node"] is None:
            base["tasks_per_node"] = max(1, base["gpus_per_node"])
        return base

    def world_size(self, stage: str) -> int:
        """How many processes a job of `stage` runs: nodes x tasks per node."""
        res = self.resources(stage)
        return res["nodes"] * res["tasks_per_node"]

    def folder(self, strict: bool = True) -> Path:
        """`job_dir` with ~ and $VARS expanded; relative paths are under the project. `strict`
        refuses a variable left unset (jobs would write into a folder named `${USER}`)."""
        text = os.path.expandvars(self.job_dir)
        if strict and "$" in text:
            raise ConfigError(
                self.source, "job_dir", self.job_dir, "uses an unset environment variable"
            )
        path = Path(text).expanduser()
        return path if path.is_absolute() else project_root() / path


def profiles_dir() -> Path:
    return project_root() / "slurm"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _unknown_cluster(name: str) -> ConfigError:
    allowed = ", ".join([*IN_PROCESS, *available_profiles()])
    return ConfigError("--cluster", "cluster", name, f"allowed: {allowed}")


def load_profile(name_or_path: str | Path) -> SlurmProfile:
    """A cluster profile by name (`slurm/<name>.yaml`) or path, validated."""
    path = resolve_named(name_or_path, profiles_dir(), "cluster profile", _unknown_cluster)
    profile = load_model(path, SlurmProfile, "a mapping of profile keys")
    for stage in ("pretrain", *EVAL_STAGES):  # each task drives cuda:LOCAL_RANK
        res = profile.resources(stage)
        if res["gpus_per_node"] and res["tasks_per_node"] != res["gpus_per_node"]:
            raise ConfigError(
                str(path),
                f"stages.{stage}" if stage in profile.stages else "tasks_per_node",
                {k: res[k] for k in ("gpus_per_node", "tasks_per_node")},
                "one task per GPU: leave tasks_per_node out or set it to gpus_per_node",
            )
    return profile


def check_batches(profile: SlurmProfile, runs: Iterable[tuple[str, ExperimentConfig]]) -> None:
    """Refuse, before anything is submitted, a (stage, config) whose global batch does not split
    evenly over the stage's processes (pre-training: per accumulation step; Mixup/CutMix: into
    even shares), and a tokenizer on more than one (it has no DDP: each would repeat its work)."""
    for stage, cfg in runs:
        world = profile.world_size(stage)
        if stage == "tokenizer":
            if world > 1:
                raise ConfigError(
                    str(profile.source),
                    "stages.tokenizer",
                    f"{world} processes",
                    "the tokenizer runs as one process: set its nodes: 1 and tasks_per_node: 1",
                )
            continue
        hp = getattr(cfg, stage)
        unit = world * (hp.accum_iter if stage == "pretrain" else 1)
        if stage != "pretrain" and stage != "linprobe" and (hp.mixup > 0 or hp.cutmix > 0):
            unit *= 2
        if hp.batch_size % unit:
            raise ConfigError(
                str(profile.source),
                f"{stage}.batch_size",
                hp.batch_size,
                f"the global batch must be a multiple of {unit} on {world} process(es) "
                f"(nodes x tasks_per_node of the {stage} stage)",
            )


def slurm_parameters(
    profile: SlurmProfile, stage: str, max_parallel: int | None = None
) -> dict[str, Any]:
    """The sbatch parameters of one stage's array, in submitit's Slurm names (what
    `SlurmExecutor.update_parameters` takes and `_make_sbatch_string` renders)."""
    res = profile.resources(stage)
    params: dict[str, Any] = {
        "job_name": f"mae-{stage}",
        "time": res["timeout_min"],
        "nodes": res["nodes"],
        "ntasks_per_node": res["tasks_per_node"],
        "cpus_per_task": res["cpus_per_task"],
        "mem": _convert_mem(res["mem_gb"]),
        "signal_delay_s": profile.signal_delay_s,
        "array_parallelism": min(profile.array_parallelism, max_parallel or sys.maxsize),
    }
    if res["gpus_per_node"]:
        params["gpus_per_node"] = res["gpus_per_node"]
    params.update({k: res[k] for k in ("partition", "account", "qos", "constraint") if res[k]})
    if profile.setup:
        params["setup"] = list(profile.setup)
    if profile.additional_parameters:
        params["additional_parameters"] = dict(profile.additional_parameters)
    if profile.world_size(stage) > 1:  # a rank that fails ends its job, not waits in a collective
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    return params


def render_sbatch(params: dict[str, Any], folder: Path, tasks: int) -> list[str]:
    """The #SBATCH lines submitit writes for an array of `tasks` with these parameters, then the
    srun line that starts the job's tasks."""
    script = _make_sbatch_string(
        command="<python> -u -m submitit.core._submit <folder>",
        folder=folder,
        map_count=tasks if tasks > 1 else None,
        **params,
    )
    lines = script.splitlines()
    return [ln for ln in lines if ln.startswith("#SBATCH")] + [
        ln for ln in lines if ln.startswith("srun ")
    ]
