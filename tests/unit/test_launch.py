"""Cluster profiles, the sbatch parameters of a dry run (no cluster needed), run selection."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import submitit

from mae.config import RuntimeConfig
from mae.schema import ConfigError, load_yaml
from mae.sweep.launch import default_max_parallel, describe, select_runs
from mae.sweep.plan import Plan, plan_study
from mae.sweep.profile import (
    available_profiles,
    check_batches,
    load_profile,
    slurm_parameters,
)
from mae.sweep.scale import load_scale
from mae.sweep.spec import parse_study, studies_dir


def micro_plan(ratios=(0.75, 0.9), evaluations=("finetune", "linprobe")) -> Plan:
    raw = load_yaml(studies_dir() / "mask_ratio_sweep.yaml")
    raw["sweep"] = {"masking.ratio": list(ratios)}
    raw["evaluations"] = list(evaluations)
    spec = parse_study(raw, "studies/mask_ratio_sweep.yaml", "mask_ratio_sweep")
    return plan_study(spec, load_scale("micro"))


def test_shipped_profiles_validate():
    assert {"dev", "example"} <= set(available_profiles())
    dev = load_profile("dev")
    assert (dev.partition, dev.gpus_per_node, dev.cpus_per_task) == ("debug", 0, 1)
    assert dev.timeout_min >= 15  # submitit treats every signal as a timeout below ~10 min
    assert dev.folder().is_relative_to(Path(__file__).resolve().parents[2] / ".submitit")
    example = load_profile("example")
    assert example.resources("pretrain")["gpus_per_node"] == 8
    assert example.resources("pretrain")["tasks_per_node"] == 8  # one task per GPU
    assert example.resources("linprobe")["nodes"] == 4  # the stage override
    assert example.world_size("pretrain") == 64 and example.world_size("finetune") == 32


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("job_dir: x\ngpus: 8\n", "gpus", "unknown key; allowed keys here: account,"),
        ("job_dir: x\nnodes: many\n", "nodes", "valid integer"),
        ("job_dir: x\ncpus_per_task: 0\n", "cpus_per_task", "greater than or equal to 1"),
        ("partition: gpu\n", "job_dir", "Field required"),
        ("job_dir: x\nstages: {finetune: {gpu: 1}}\n", "stages.finetune.gpu", "constraint,"),
        ("job_dir: x\nstages: {eval: {nodes: 1}}\n", "stages.eval", "'pretrain'"),
        ("job_dir: x\nsetup: module load cuda\n", "setup", "valid list"),
        ("job_dir: [x\n", "line 2", "YAML syntax error"),
        ("job_dir: x\ngpus_per_node: 4\ntasks_per_node: 2\n", "tasks_per_node", "one task per GPU"),
        (
            "job_dir: x\nstages: {linprobe: {gpus_per_node: 2, tasks_per_node: 1}}\n",
            "stages.linprobe",
            "one task per GPU",
        ),
        ("job_dir: x\ntasks_per_node: 0\n", "tasks_per_node", "greater than or equal to 1"),
    ],
)
def test_bad_profiles_fail_in_one_line_naming_file_and_key(tmp_path, text, key, allowed):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: got ")
    assert allowed in message


def test_unknown_cluster_lists_what_exists():
    with pytest.raises(ConfigError) as info:
        load_profile("nope")
    assert str(info.value) == (
        "--cluster: cluster: got 'nope'; allowed: local, debug, " + ", ".join(available_profiles())
    )


def test_dry_run_renders_each_arrays_sbatch_lines_without_slurm(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun: nothing may need them
    text = describe(micro_plan(), "example")
    sections = {block.split(":")[0]: block for block in text.split("\n\n")}
    pretrain, finetune = sections["pretrain"], sections["finetune"]
    for line in (
        "#SBATCH --array=0-1%2",
        "#SBATCH --nodes=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",  # one task per GPU
        "#SBATCH --cpus-per-task=10",
        "#SBATCH --mem=480GB",
        "#SBATCH --time=4320",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --partition=learnlab",
        "#SBATCH --account=my-account",
        "#SBATCH --qos=normal",
        "#SBATCH --constraint=volta32gb",
        "# setup: module load cuda/12.4",
    ):
        assert line in pretrain, line
    assert "dependency" not in pretrain
    assert "2 held by afterok on their own pre-training task" in finetune
    assert "#SBATCH --dependency='afterok:<pretrain array tasks>'" in finetune
    assert "#SBATCH --nodes=4" in finetune and "#SBATCH --time=2880" in finetune
    assert "#SBATCH --ntasks-per-node=8" in finetune  # evaluations run DDP too
    assert "--kill-on-bad-exit=1" in finetune  # a failed rank ends its job
    assert "#SBATCH --array=0-1%1" in describe(micro_plan(), "example", max_parallel=1)


def test_dry_run_of_the_local_queue():
    plan = micro_plan()
    cores = len(os.sched_getaffinity(0))
    assert describe(plan, "local") == (
        f"local: 6 jobs (pretrain: 2, finetune: 2, linprobe: 2), at most {cores} at once; "
        "evaluations after their pre-training"
    )
    assert "at most 3 at once" in describe(plan, "local", max_parallel=3)


def test_parallelism_follows_threads_per_job():
    plan = micro_plan()  # micro runs ask for one thread
    assert default_max_parallel(plan.runs) == len(os.sched_getaffinity(0))
    unbounded = [
        replace(r, config=r.config.model_copy(update={"runtime": RuntimeConfig(threads=None)}))
        for r in plan.runs
    ]
    assert default_max_parallel(unbounded) == 1  # a run that takes every core runs alone


def test_selection_skips_finished_unavailable_and_failed_with_their_evaluations():
    plan = micro_plan(evaluations=("linprobe",))
    pre75, pre90, lin75, lin90 = plan.runs
    runs = [
        replace(pre75, status="failed"),
        replace(pre90, status="finished"),
        lin75,
        replace(lin90, status="resumable"),
    ]
    todo, skipped = select_runs(runs)
    assert [r.name for r in todo] == [lin90.name]
    assert dict(skipped) == {
        pre75.name: "failed before; rerun with --retry-failed",
        pre90.name: "already finished",
        lin75.name: f"its pre-training {pre75.name} failed before",
    }
    todo, skipped = select_runs(runs, retry_failed=True)
    assert [r.name for r in todo] == [pre75.name, lin75.name, lin90.name]


def test_slurm_parameters_are_what_submitit_accepts(tmp_path):
    profile = load_profile("example")
    executor = submitit.SlurmExecutor.__new__(submitit.SlurmExecutor)  # no srun needed
    valid = executor._valid_parameters()
    for stage in ("pretrain", "finetune", "linprobe", "partial", "scratch"):
        params = slurm_parameters(profile, stage)
        assert set(params) <= valid
        assert params["ntasks_per_node"] == max(1, params.get("gpus_per_node", 0))


def test_tasks_on_cpu_nodes_and_global_batches_that_must_split(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text("job_dir: x\ntasks_per_node: 2\nstages: {linprobe: {tasks_per_node: 1}}\n")
    profile = load_profile(path)
    assert profile.world_size("finetune") == 2 and profile.world_size("linprobe") == 1
    finetune, linprobe = (
        slurm_parameters(profile, "finetune"),
        slurm_parameters(profile, "linprobe"),
    )
    assert finetune["ntasks_per_node"] == 2 and finetune["srun_args"] == ["--kill-on-bad-exit=1"]
    assert linprobe["ntasks_per_node"] == 1 and "srun_args" not in linprobe
    plan = micro_plan()  # micro: global batches of 128, no Mixup
    check_batches(profile, [(r.stage, r.config) for r in plan.runs])
    odd = plan.runs[2].config.model_copy(
        update={"finetune": plan.runs[2].config.finetune.model_copy(update={"batch_size": 99})}
    )
    with pytest.raises(ConfigError, match=r"finetune.batch_size: got 99; .* multiple of 2 on 2"):
        check_batches(profile, [("finetune", odd)])
    with pytest.raises(ConfigError, match="finetune.batch_size: got 99"):
        describe(replace(plan, runs=[replace(plan.runs[2], config=odd)]), "cpu", profile=profile)
    with pytest.raises(ConfigError, match="stages.tokenizer: got '2 processes'; the tokenizer"):
        check_batches(profile, [("tokenizer", plan.runs[0].config)])
