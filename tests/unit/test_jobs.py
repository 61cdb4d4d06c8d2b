"""The job submitit pickles: its spec, its requeue hook, its guards."""

from __future__ import annotations

import fcntl
import pickle

import pytest
import submitit

from mae.jobs import StageJob, job_tags, label_params, run_stage
from mae.logger import NullLogger
from mae.schema import load_yaml
from mae.sweep.launch import job_spec
from mae.sweep.plan import Plan, plan_study
from mae.sweep.scale import load_scale
from mae.sweep.spec import StudySpec, parse_study, studies_dir


def micro_plan_spec() -> StudySpec:
    """mask_ratio_sweep at 75% and 90% with a linear probe each."""
    raw = load_yaml(studies_dir() / "mask_ratio_sweep.yaml")
    raw["sweep"] = {"masking.ratio": [0.75, 0.9]}
    raw["evaluations"] = ["linprobe"]
    return parse_study(raw, "studies/mask_ratio_sweep.yaml", "mask_ratio_sweep")


def micro_plan() -> Plan:
    return plan_study(micro_plan_spec(), load_scale("micro"))


def test_job_spec_and_job_pickle_and_requeue_themselves(tmp_path):
    plan = micro_plan()
    lin = plan.runs[2]
    spec = job_spec(lin, tmp_path, "sqlite:///x.db", "1")
    assert spec.workdir == str(tmp_path / "micro" / "linprobe" / lin.key[:16])
    assert spec.pretrain_checkpoint == tmp_path / "micro" / "pretrain" / lin.depends_on[:16] / (
        "checkpoint.pt"
    )
    assert pickle.loads(pickle.dumps(spec)) == spec
    job = StageJob()
    assert isinstance(job, submitit.helpers.Checkpointable)
    resubmission = job.checkpoint(spec)  # what submitit calls on timeout or preemption
    assert resubmission.function is job and resubmission.args == (spec,)
    assert label_params(lin.labels)["label.masking.ratio"] == "0.75"


def test_a_dvae_pretraining_finds_its_tokenizer_by_the_tokenizers_workdir(tmp_path):
    plan = plan_study(micro_plan_spec(), load_scale("micro"), ["target.kind=dvae"])
    tokenizer, pre75, pre90, lin75, _ = plan.runs
    assert (tokenizer.stage, pre75.depends_on, pre90.depends_on) == (
        "tokenizer",
        *[tokenizer.key] * 2,
    )
    tok_spec = job_spec(tokenizer, tmp_path, "sqlite:///x.db", "1")
    assert tok_spec.workdir == str(tmp_path / "micro" / "tokenizer" / tokenizer.key[:16])
    assert tok_spec.depends_on is None and tok_spec.tokenizer_checkpoint is None
    spec = job_spec(pre75, tmp_path, "sqlite:///x.db", "1")
    assert spec.tokenizer_checkpoint == tmp_path / "micro" / "tokenizer" / tokenizer.key[:16] / (
        "checkpoint.pt"
    )
    assert spec.pretrain_checkpoint is None
    assert job_tags(spec, None)["tokenizer_key"] == tokenizer.key
    evaluation = job_spec(lin75, tmp_path, "sqlite:///x.db", "1")
    assert job_tags(evaluation, None)["pretrain_key"] == pre75.key
    assert evaluation.tokenizer_checkpoint is None


def test_evaluation_refuses_a_missing_pretraining_checkpoint(tmp_path):
    plan = micro_plan()
    spec = job_spec(plan.runs[2], tmp_path, f"sqlite:///{tmp_path}/db.db", "1")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        run_stage(spec, plan.runs[2].config, tmp_path / "w", NullLogger())


def test_a_run_already_running_elsewhere_is_refused_without_touching_mlflow(tmp_path):
    run = micro_plan().runs[0]
    uri = f"sqlite:///{tmp_path / 'db.db'}"
    spec = job_spec(run, tmp_path / "runs", uri, "1")
    workdir = tmp_path / "runs" / "micro" / "pretrain" / run.key[:16]
    workdir.mkdir(parents=True)
    with (workdir / "job.lock").open("w") as held:  # the first job, still running
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="already running in another job"):
            StageJob()(spec)
    assert not (tmp_path / "db.db").exists()
    assert not (workdir / "checkpoint.pt").exists()


def test_progress_file_tells_the_launcher_how_far_a_job_is(tmp_path):
    from support import RecordingLogger

    from mae.jobs import ProgressFile, read_progress

    inner = RecordingLogger()
    logger = ProgressFile(inner, tmp_path)
    assert read_progress(tmp_path) is None
    logger.log_metrics({"pretrain/loss": 0.5}, step=3)
    logger.log_metrics({"pretrain/loss": 0.4}, step=4)
    assert read_progress(tmp_path) == 4
    assert inner.series("pretrain/loss") == [0.5, 0.4]  # passed on unchanged
