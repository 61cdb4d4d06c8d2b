"""DDP through Slurm: a micro study whose every stage is a job of 2 tasks on the dev cluster (gloo
on its CPUs), launched by the normal launcher, against 1 process at the same global batch.
Pre-training follows the 1-process loss curve within 2%; fine-tuning and the linear probe of its
encoder train the model 1 process trains from that encoder (losses within 1e-5, accuracies
equal). Tolerances as in tests/integration/test_ddp.py, which says why."""

from __future__ import annotations

import mlflow
import pytest
from support import RecordingLogger

from mae import track
from mae.evaluate import run_eval
from mae.schema import load_yaml
from mae.sweep.launch import launch, workdir_for
from mae.sweep.plan import plan_study
from mae.sweep.profile import load_profile
from mae.sweep.scale import load_scale
from mae.sweep.spec import parse_study, studies_dir
from mae.train.checkpoint import load_checkpoint
from mae.train.pretrain import pretrain

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SETS = [
    "pretrain.epochs=3",
    "pretrain.batch_size=64",
    "pretrain.blr=5e-3",
    "runtime.recon_images=0",
    "finetune.epochs=2",
    "finetune.batch_size=32",
    "finetune.blr=5e-2",
    "finetune.warmup_epochs=0.5",
    "linprobe.epochs=3",
    "linprobe.batch_size=32",
    "linprobe.warmup_epochs=0.5",
]
PRETRAIN_REL_TOL = 0.02
EVAL_LOSS_REL_TOL = 1e-5


def history(uri: str, run_id: str, key: str) -> list[float]:
    points = mlflow.MlflowClient(uri).get_metric_history(run_id, key)
    assert sorted(p.step for p in points) == list(range(1, len(points) + 1))  # one writer
    return [p.value for p in sorted(points, key=lambda p: p.step)]


def test_every_stage_runs_ddp_on_two_slurm_tasks_like_one_process(tracking_uri, tmp_path):
    raw = load_yaml(studies_dir() / "mask_ratio_sweep.yaml")
    raw["sweep"] = {"masking.ratio": [0.75]}
    raw["evaluations"] = ["finetune", "linprobe"]
    spec = parse_study(raw, "studies/mask_ratio_sweep.yaml (trimmed)", "mask_ratio_sweep")
    plan = plan_study(spec, load_scale("micro"), SETS, tracking_uri=tracking_uri)
    profile = load_profile("dev").model_copy(
        update={"job_dir": str(tmp_path / "submitit"), "tasks_per_node": 2}
    )
    runs = tmp_path / "runs"

    report = launch(plan, "dev", profile=profile, tracking_uri=tracking_uri, runs_dir=runs)

    assert report.ok, report.failed
    experiment_id = track.find_experiment(tracking_uri, "micro")
    records = track.find_runs(tracking_uri, experiment_id, [r.key for r in plan.runs])
    by_stage = {run.stage: (run, records[run.key]) for run in plan.runs}
    assert {record.status for _, record in by_stage.values()} == {"FINISHED"}
    checkpoints = {
        stage: load_checkpoint(workdir_for(runs, "micro", stage, run.key) / "checkpoint.pt")
        for stage, (run, _) in by_stage.items()
    }
    assert all(len(state["rng"]) == 2 for state in checkpoints.values())  # both tasks ran

    run, record = by_stage["pretrain"]
    single = RecordingLogger()
    pretrain(run.config, tmp_path / "single-pretrain", single)
    slurm_losses = history(tracking_uri, record.run_id, "pretrain/loss")
    print("pretrain loss, 1 process:", single.series("pretrain/loss"), "2 tasks:", slurm_losses)
    assert slurm_losses == pytest.approx(single.series("pretrain/loss"), rel=PRETRAIN_REL_TOL)

    encoder = workdir_for(runs, "micro", "pretrain", run.key) / "checkpoint.pt"
    for stage in ("finetune", "linprobe"):
        run, record = by_stage[stage]
        single = RecordingLogger()
        numbers = run_eval(stage, run.config, encoder, tmp_path / f"single-{stage}", single)
        losses = history(tracking_uri, record.run_id, f"{stage}/train_loss")
        print(f"{stage} loss, 1 process:", single.series(f"{stage}/train_loss"), "2 tasks:", losses)
        assert losses == pytest.approx(single.series(f"{stage}/train_loss"), rel=EVAL_LOSS_REL_TOL)
        final = mlflow.MlflowClient(tracking_uri).get_run(record.run_id).data.metrics
        print(f"{stage} test top-1, 1 process: {numbers[f'{stage}/top1']}, 2 tasks:", final)
        for key in (f"{stage}/top1", f"{stage}/top5"):
            assert final[f"final/{key}"] == numbers[key]
