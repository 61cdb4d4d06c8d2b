"""Pre-training on the micro scale (digits, vit_micro_cpu): it learns, it resumes exactly, and its
optimizer, schedule and accumulation follow the official recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from support import RecordingLogger

from mae.config import pretrain_key
from mae.data import make_loader, pretrain_set
from mae.model import build_mae
from mae.model.targets import PCATarget
from mae.train.checkpoint import load_checkpoint
from mae.train.fit_target import PCA_FIT_IMAGES
from mae.train.optim import build_optimizer
from mae.train.pretrain import Run, per_rank_batch, pretrain, train_one_epoch
from mae.train.runtime import (
    DistInfo,
    compiled,
    init_distributed,
    progress_enabled,
    resolve_compile,
    resolve_device,
    resolve_precision,
)
from mae.train.schedule import lr_at, peak_lr

# Short pre-trainings on the micro scale: 3 epochs at batch 64.
FAST = {
    "pretrain.epochs": 3,
    "pretrain.batch_size": 64,
    "pretrain.blr": 5e-3,
    "runtime.recon_images": 2,
}


@pytest.mark.slow
def test_micro_pretraining_lowers_masked_loss(micro, tmp_path):
    cfg = micro(FAST, **{"pretrain.epochs": 8})
    logger = RecordingLogger()
    result = pretrain(cfg, tmp_path, logger)

    losses = logger.series("pretrain/loss")
    print("micro pre-training losses per epoch:", [round(x, 4) for x in losses])
    # Observed: 1.756 -> 0.952 -> ... -> 0.782 (last/first 0.45).
    assert len(losses) == 8
    assert losses[-1] < 0.6 * losses[0]
    assert losses[-1] < losses[1]  # still improving after the first epoch
    assert [step for step, _ in logger.metrics] == list(range(1, 9))
    assert set(logger.metrics[0][1]) == {
        "pretrain/loss",
        "pretrain/lr",
        "pretrain/epoch_time_s",
        "pretrain/images_per_s",
    }
    assert result["pretrain/loss"] == losses[-1]
    assert result["pretrain/epochs"] == 8.0
    assert result["pretrain/wall_time_s"] == pytest.approx(
        sum(logger.series("pretrain/epoch_time_s"))
    )
    assert result["pretrain/images_per_s"] > 0

    # The logged lr is the mean of the per-iteration schedule over the epoch.
    steps = len(pretrain_set(cfg)) // 64  # drop_last
    peak = 5e-3 * 64 / 256
    for epoch, logged in enumerate(logger.series("pretrain/lr")):
        expected = (
            sum(
                lr_at(epoch + i / steps, lr=peak, min_lr=0.0, warmup_epochs=1, epochs=8)
                for i in range(steps)
            )
            / steps
        )
        assert logged == pytest.approx(expected, rel=1e-12)

    picture = tmp_path / "reconstruction.png"
    assert picture.is_file() and logger.artifacts == [(picture, None)]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 8 and state["step"] == 8 * steps
    assert state["final"] == result


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_stop_and_resume_is_bit_identical(micro, tmp_path):
    cfg = micro(FAST, **{"runtime.checkpoint_every": 5})  # stopping must checkpoint by itself
    straight, interrupted = RecordingLogger(), RecordingLogger()
    full = pretrain(cfg, tmp_path / "straight", straight)

    stopped = pretrain(cfg, tmp_path / "resumed", interrupted, stop_after_epoch=1)
    assert stopped["pretrain/epochs"] == 1.0
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    idle = RecordingLogger()  # already past the stop: nothing to do, same answer
    assert pretrain(cfg, tmp_path / "resumed", idle, stop_after_epoch=1) == stopped
    assert idle.metrics == []
    resumed = pretrain(cfg, tmp_path / "resumed", interrupted)

    assert interrupted.series("pretrain/loss") == straight.series("pretrain/loss")
    assert interrupted.series("pretrain/lr") == straight.series("pretrain/lr")
    assert [s for s, _ in interrupted.metrics] == [1, 2, 3]
    assert resumed["pretrain/loss"] == full["pretrain/loss"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    _assert_same_state(a["model"], b["model"])
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 3
    opt_a, opt_b = a["optimizer"], b["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for idx in opt_a["state"]:
        _assert_same_state(opt_a["state"][idx], opt_b["state"][idx])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])

    # A finished run asked again reports its numbers without training.
    again = RecordingLogger()
    assert pretrain(cfg, tmp_path / "straight", again) == full
    assert again.metrics == []


def test_a_damaged_checkpoint_resumes_from_the_previous_one_and_says_so(micro, tmp_path):
    cfg = micro(FAST)
    full = pretrain(cfg, tmp_path / "straight")
    pretrain(cfg, tmp_path / "damaged", stop_after_epoch=2)  # latest: epoch 2, previous: epoch 1
    latest = tmp_path / "damaged" / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as by a full disk or a bad copy
    logger = RecordingLogger()
    resumed = pretrain(cfg, tmp_path / "damaged", logger)
    assert "previous checkpoint (epoch 1)" in logger.tags["checkpoint_recovered"]
    assert [step for step, _ in logger.metrics] == [2, 3]  # epoch 2 trained again, exactly
    assert resumed["pretrain/loss"] == full["pretrain/loss"]


def test_pca_basis_is_fitted_once_and_a_resumed_run_keeps_it_bit_for_bit(
    micro, tmp_path, monkeypatch
):
    cfg = micro(FAST, **{"target.kind": "pca", "runtime.checkpoint_every": 5})
    fitted: list[int] = []
    original = PCATarget.fit

    def counting_fit(self, patches):
        fitted.append(patches.shape[0])
        original(self, patches)

    monkeypatch.setattr(PCATarget, "fit", counting_fit)
    logger = RecordingLogger()
    pretrain(cfg, tmp_path / "resumed", logger, stop_after_epoch=1)
    before = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    result = pretrain(cfg, tmp_path / "resumed", logger)
    after = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]

    images = min(len(pretrain_set(cfg)), PCA_FIT_IMAGES)
    assert fitted == [images * cfg.num_patches]  # once, on a bounded sample
    for name in ("target.mean", "target.basis", "target.explained", "target.fitted"):
        assert torch.equal(before[name], after[name]), name
    explained = float(after["target.explained"])
    assert 0.5 < explained < 1.0
    assert logger.metrics[0] == (0, {"pretrain/pca_explained_variance": explained})
    assert result["pretrain/pca_explained_variance"] == explained

    straight = pretrain(cfg, tmp_path / "straight")  # the same sample, the same basis
    basis = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]["target.basis"]
    assert torch.equal(basis, after["target.basis"]) and straight == result | {
        k: v for k, v in straight.items() if "time" in k or "per_s" in k
    }


def test_resume_refuses_a_checkpoint_of_another_config(micro, tmp_path):
    pretrain(micro(FAST), tmp_path, stop_after_epoch=1)
    with pytest.raises(ValueError, match="belongs to pretrain run"):
        pretrain(micro(FAST, **{"masking.ratio": 0.5}), tmp_path)


def test_gradient_accumulation_matches_one_big_batch(micro):
    """Two micro-batches of 32 accumulate the gradient of one batch of 64: with plain SGD (an
    update linear in the gradient) the weights after an epoch agree to float rounding."""
    cfg = micro(FAST, **{"data.train_subset": 256, "pretrain.warmup_epochs": 0})
    dataset = pretrain_set(cfg)
    weights, start = {}, {}
    for accum in (1, 2):
        torch.manual_seed(0)
        model = build_mae(cfg)
        start[accum] = {k: v.clone() for k, v in model.state_dict().items()}
        loader = make_loader(dataset, 64, True, seed=0, epoch=0, drop_last=True)
        sgd = torch.optim.SGD(model.parameters(), lr=0.0)
        cpu = torch.device("cpu")
        run = Run(cfg, cpu, DistInfo(), 1e-2, accum, model, model, sgd, dataset, batch=64)
        torch.manual_seed(1)  # same augmentation and masks for both
        train_one_epoch(run, loader, 0)
        weights[accum] = model.state_dict()
    moved = max((weights[1][k] - start[1][k]).abs().max().item() for k in start[1])
    gap = max((weights[1][k] - weights[2][k]).abs().max().item() for k in start[1])
    print(f"largest weight change {moved:.2e}, accum 1 vs 2 differ by at most {gap:.2e}")
    assert moved > 5e-3
    assert gap < 1e-5 * moved


def test_batch_must_split_into_micro_batches(micro):
    assert per_rank_batch(micro(FAST, **{"pretrain.accum_iter": 4}), 2) == 32
    with pytest.raises(ValueError, match="accum_iter 3"):
        per_rank_batch(micro(FAST, **{"pretrain.accum_iter": 3}), 1)


def test_lr_schedule_warms_up_linearly_then_cosine_to_min_lr():
    peak = peak_lr(1.5e-4, 4096)
    assert peak == pytest.approx(2.4e-3)  # the paper's ViT-L recipe
    kw = {"lr": peak, "min_lr": 1e-5, "warmup_epochs": 40, "epochs": 800}
    assert lr_at(0, **kw) == 0.0
    assert lr_at(10, **kw) == pytest.approx(peak / 4)
    assert lr_at(20, **kw) == pytest.approx(peak / 2)
    assert lr_at(40, **kw) == pytest.approx(peak)
    assert lr_at(420, **kw) == pytest.approx((peak + 1e-5) / 2)  # half way down the cosine
    assert lr_at(800, **kw) == pytest.approx(1e-5)
    after = [lr_at(e, **kw) for e in range(40, 801, 20)]
    assert all(a > b for a, b in zip(after, after[1:], strict=False))


def test_weight_decay_spares_norms_biases_and_tokens(micro):
    cfg = micro(FAST)
    model = build_mae(cfg)
    optimizer = build_optimizer(model, cfg.pretrain, lr=1e-2)
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    decay_of = {
        id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
    }
    names = dict(model.named_parameters())
    assert id(names["pos_embed"]) not in decay_of  # fixed sin-cos: never optimised
    assert id(names["decoder_pos_embed"]) not in decay_of
    for name, param in names.items():
        if not param.requires_grad:
            continue
        spared = param.ndim <= 1 or name.endswith(".bias") or name in ("cls_token", "mask_token")
        assert decay_of[id(param)] == (0.0 if spared else 0.05), name

    # Behaviour: with zero gradients AdamW only decays, by the factor (1 - lr * wd).
    before = {n: p.detach().clone() for n, p in names.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(names["cls_token"], before["cls_token"])
    assert torch.equal(names["mask_token"], before["mask_token"])
    assert torch.equal(names["norm.weight"], before["norm.weight"])
    assert torch.equal(names["blocks.0.attn.qkv.bias"], before["blocks.0.attn.qkv.bias"])
    w = "blocks.0.attn.qkv.weight"
    assert torch.allclose(names[w], before[w] * (1 - 1e-2 * 0.05))


def test_fused_adamw_follows_the_per_parameter_loop(micro):
    """The fused kernel is the optimizer on the CPU. One step moves every weight where the
    official per-parameter loop moves it, to float rounding; over 30 steps the loss curves agree
    to 1e-5 relative (single weights whose gradient is near zero may drift further apart: Adam
    divides by the gradient's own size, which amplifies rounding there)."""
    cfg = micro(FAST)
    images = torch.randn(16, 1, 8, 8)
    first, curves = [], []
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_mae(cfg)
        optimizer = build_optimizer(model, cfg.pretrain, lr=1e-2)
        assert all(g["fused"] for g in optimizer.param_groups)
        if not fused:
            for group in optimizer.param_groups:
                group["fused"], group["foreach"] = None, False
        generator, curve = torch.Generator().manual_seed(1), []
        for _ in range(30):
            optimizer.zero_grad(set_to_none=True)
            loss = model(images, generator=generator).loss
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
            if len(curve) == 1:
                first.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        curves.append(torch.tensor(curve))
    assert torch.allclose(first[0], first[1], rtol=0, atol=1e-6)
    assert torch.allclose(curves[0], curves[1], rtol=1e-5, atol=0)


@pytest.mark.slow
def test_ddp_two_processes_share_the_batch(micro, tmp_path):
    """torchrun with 2 CPU processes (gloo): rank 0 checkpoints, losses agree across ranks."""
    cfg = micro(FAST, **{"pretrain.epochs": 2, "runtime.recon_images": 0})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent("""
        import json, os, sys
        from pathlib import Path
        import torch
        from mae.config import validate_config
        from mae.train.pretrain import pretrain
        cfg = validate_config(json.loads(Path(sys.argv[1]).read_text()))
        result = pretrain(cfg, Path(sys.argv[2]))
        Path(sys.argv[2], f"result{os.environ['RANK']}.json").write_text(json.dumps(result))
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path / "cfg.json"),
        str(tmp_path / "run"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / "run" / f"result{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["pretrain/loss"] == results[1]["pretrain/loss"]  # all-reduced
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 2
    assert state["step"] == 2 * (len(pretrain_set(cfg)) // 64)  # 32 images per rank per step
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


@pytest.mark.slow
def test_bf16_autocast_trains_like_fp32(micro, tmp_path):
    """The CUDA default (bf16 autocast) exercised on the CPU: same run, loss within 5% of fp32."""
    base = {"pretrain.epochs": 2, "data.train_subset": 512, "runtime.recon_images": 0}
    fp32 = pretrain(micro(FAST, **base, **{"runtime.precision": "fp32"}), tmp_path / "fp32")
    bf16 = pretrain(micro(FAST, **base, **{"runtime.precision": "bf16"}), tmp_path / "bf16")
    print("fp32 / bf16 final loss:", fp32["pretrain/loss"], bf16["pretrain/loss"])
    assert bf16["pretrain/loss"] != fp32["pretrain/loss"]  # autocast really ran
    assert bf16["pretrain/loss"] == pytest.approx(fp32["pretrain/loss"], rel=0.05)


def test_runtime_choices(micro, monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 1)
    assert resolve_precision(cpu, "auto") is None  # fp32 on the CPU
    assert resolve_precision(gpu, "auto") is torch.bfloat16
    assert resolve_precision(gpu, "fp32") is None
    assert resolve_device(micro(FAST, **{"runtime.device": "cpu"}).runtime, 1) == cpu
    assert resolve_device(micro(FAST, **{"runtime.device": "cuda"}).runtime, 1) == gpu  # per rank
    monkeypatch.setenv("CI", "1")
    assert not progress_enabled(None)
    assert progress_enabled(True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == DistInfo(0, 1, 0)


def test_compile_is_a_runtime_flag_on_cuda_by_default(micro, monkeypatch, tmp_path):
    """`runtime.compile` None compiles on CUDA only (on the CPU it paid nothing); an explicit
    setting wins; the flag is outside content keys; inductor's cache defaults to the project's."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert not resolve_compile(cpu, None) and resolve_compile(gpu, None)
    assert resolve_compile(cpu, True) and not resolve_compile(gpu, False)
    assert pretrain_key(micro(FAST)) == pretrain_key(micro(FAST, **{"runtime.compile": True}))

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model: calls.append(model) or model)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("MAE_PROJECT_DIR", str(tmp_path))
    model = torch.nn.Linear(2, 2)
    assert compiled(model, cpu, None) is model and not calls
    assert compiled(model, cpu, True) is model and calls == [model]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".cache" / "torchinductor")
