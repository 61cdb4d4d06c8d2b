"""DDP for every stage with torchrun (2 CPU processes, gloo) against 1 process at the same global
batch: the evaluations train the same model to float rounding, pre-training follows the same loss
curve within the noise of its masks, and a DDP run stopped and resumed by new processes ends
exactly where an uninterrupted one does.

Tolerances, and why:
- Evaluations (fine-tuning, partial, scratch at the micro recipe: no Mixup, no drop path, no
  crops; the linear probe with its BatchNorm synced): both runs see the same global batches, the
  same initial weights and deterministic layers, so only the order of float additions differs
  (a mean of two half-batch means, a gradient all-reduce). Train losses agree within 1e-5
  relative (observed: <= 3e-7), accuracies exactly (each a count of images).
- Pre-training: the same initial weights and global batches, but each rank draws its own masks
  and crops (seeded by rank, as the official code), so the curves differ by sampling noise:
  observed 0.2-0.4% per epoch, against 1.3-3.5% between two single-process seeds after the first
  epoch. The bound is 2%: five times what DDP shows, below what a different seed gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mae.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # 3 runs of every stage, 2 of them with torchrun: minutes

TESTS = Path(__file__).resolve().parents[1]
WORKER = TESTS / "ddp_worker.py"
EVALS = ("finetune", "linprobe", "partial", "scratch")
SHORT = {"batch_size": 32, "warmup_epochs": 0.5}  # 40 steps an epoch, so that 3 epochs learn
SETTINGS = {
    "pretrain": {"epochs": 3, "batch_size": 64, "blr": 5e-3},
    "finetune": {**SHORT, "epochs": 3, "blr": 5e-2},
    "linprobe": {**SHORT, "epochs": 3},
    "partial": {**SHORT, "epochs": 2, "blr": 5e-2},
    "scratch": {**SHORT, "epochs": 2},
    "runtime": {"recon_images": 0},
}
PRETRAIN_REL_TOL = 0.02
EVAL_LOSS_REL_TOL = 1e-5


def run_worker(plan: dict, folder: Path, processes: int) -> list[dict]:
    """Run the plan in `processes` processes (torchrun when more than one); every rank's results."""
    folder.mkdir(parents=True, exist_ok=True)
    plan_file = folder / "plan.json"
    plan_file.write_text(json.dumps({**plan, "out": str(folder)}))
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [*launcher, str(WORKER), str(plan_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((folder / f"result{r}.json").read_text()) for r in range(processes)]


def steps(folder: Path, names: tuple[str, ...], stop: int | None = None) -> list[dict]:
    return [
        {"name": name, "stage": name, "workdir": str(folder / name), "stop_after_epoch": stop}
        for name in names
    ]


def series(result: dict, name: str) -> list[float]:
    return [numbers[name] for _, numbers in result["metrics"] if name in numbers]


@pytest.fixture(scope="module")
def runs(micro, tmp_path_factory) -> dict[str, list[dict]]:
    """One process and two (torchrun) on the same config; both evaluate the one-process encoder.
    Then a DDP fine-tuning stopped after epoch 1 and resumed by two new processes."""
    root = tmp_path_factory.mktemp("ddp")
    config = micro(SETTINGS).model_dump(mode="json")
    encoder = root / "single" / "pretrain" / "checkpoint.pt"
    out: dict[str, list[dict]] = {}
    for name, processes in (("single", 1), ("ddp", 2)):
        folder = root / name
        plan = {
            "config": config,
            "encoder": str(encoder),
            "steps": steps(folder, ("pretrain", *EVALS)),
        }
        if processes == 2:
            stopped = steps(folder / "stopped", ("finetune",), stop=1)
            plan["steps"] += [{**stopped[0], "name": "finetune-stopped"}]
        out[name] = run_worker(plan, folder, processes)
    resumed = steps(root / "ddp" / "stopped", ("finetune",))
    plan = {"config": config, "encoder": str(encoder), "steps": resumed}
    out["resumed"] = run_worker(plan, root / "resumed", 2)
    out["root"] = root  # type: ignore[assignment]
    return out


def test_ranks_agree_and_rank0_alone_logs(runs):
    rank0, rank1 = runs["ddp"]
    for name in ("pretrain", *EVALS):
        assert rank0[name]["result"].keys() == rank1[name]["result"].keys()
        for key, value in rank0[name]["result"].items():
            if not key.endswith(("wall_time_s", "images_per_s")):
                assert rank1[name]["result"][key] == value, (name, key)  # all-reduced
        assert rank0[name]["metrics"] and not rank1[name]["metrics"]  # one MLflow writer


def test_pretraining_follows_the_single_process_curve(runs):
    single, ddp = runs["single"][0]["pretrain"], runs["ddp"][0]["pretrain"]
    ones, twos = series(single, "pretrain/loss"), series(ddp, "pretrain/loss")
    print("pretrain loss, 1 process:", ones, "2 processes:", twos)
    assert len(ones) == len(twos) == SETTINGS["pretrain"]["epochs"]
    for one, two in zip(ones, twos, strict=True):
        assert two == pytest.approx(one, rel=PRETRAIN_REL_TOL)
    assert series(ddp, "pretrain/lr") == pytest.approx(series(single, "pretrain/lr"), rel=1e-12)
    root = runs["root"]
    one = load_checkpoint(root / "single" / "pretrain" / "checkpoint.pt")
    two = load_checkpoint(root / "ddp" / "pretrain" / "checkpoint.pt")
    assert one["step"] == two["step"]  # the same global batches
    assert len(one["rng"]) == 1 and len(two["rng"]) == 2  # each rank's streams, written once


@pytest.mark.parametrize("stage", EVALS)
def test_evaluations_train_the_single_process_model(runs, stage):
    single, ddp = runs["single"][0][stage], runs["ddp"][0][stage]
    losses = series(single, f"{stage}/train_loss"), series(ddp, f"{stage}/train_loss")
    print(f"{stage} train loss, 1 process:", losses[0], "2 processes:", losses[1])
    assert losses[1] == pytest.approx(losses[0], rel=EVAL_LOSS_REL_TOL)
    for key in (f"{stage}/val_top1", f"{stage}/val_top5"):
        assert series(ddp, key) == series(single, key)
    for key in (f"{stage}/top1", f"{stage}/top5"):
        assert ddp["result"][key] == single["result"][key]
    if stage in ("finetune", "linprobe"):  # they learn (10 classes; observed 27% and 32%)
        assert single["result"][f"{stage}/top1"] > 20
    state = load_checkpoint(runs["root"] / "ddp" / stage / "checkpoint.pt")
    assert len(state["rng"]) == 2 and state["final"] is not None


def test_a_stopped_ddp_run_resumes_exactly_in_new_processes(runs):
    uninterrupted = runs["ddp"][0]["finetune"]
    stopped = runs["ddp"][0]["finetune-stopped"]
    resumed = runs["resumed"][0]["finetune"]
    assert [step for step, _ in stopped["metrics"]] == [1]
    assert [step for step, _ in resumed["metrics"]] == [2, 3]  # from the checkpoint, on both ranks
    assert stopped["metrics"] + resumed["metrics"] == uninterrupted["metrics"]
    final = {k: v for k, v in resumed["result"].items() if not k.endswith("wall_time_s")}
    assert final == {k: uninterrupted["result"][k] for k in final}
