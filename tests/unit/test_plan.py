"""Planning: expansion, content-key dedupe across studies, paper labels, statuses from MLflow, and
the tokenizer stage that dVAE-target pre-trainings wait for."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from support import tracked_run

from mae import track
from mae.config import TABLE_AXES, run_key, validate_config
from mae.schema import ConfigError
from mae.sweep.launch import select_runs
from mae.sweep.plan import Plan, mark_shared, plan_study
from mae.sweep.scale import load_scale
from mae.sweep.spec import available_studies, load_study, parse_study
from mae.sweep.status import with_status


def plan(name: str, scale: str, **kw) -> Plan:
    return plan_study(load_study(name), load_scale(scale), **kw)


def run_named(p: Plan, suffix: str):
    (run,) = [r for r in p.runs if r.name.endswith(suffix)]
    return run


@pytest.mark.parametrize("scale", ["micro", "tiny"])
@pytest.mark.parametrize("name", available_studies())
def test_every_study_plans(name: str, scale: str) -> None:
    p = plan(name, scale)
    assert p.runs and p.study == name and p.scale == scale
    keys = [r.key for r in p.runs]
    assert len(set(keys)) == len(keys)
    assert len({r.name for r in p.runs}) == len(p.runs)
    pretrains = {r.key for r in p.runs if r.stage == "pretrain"}
    tokenizers = {r.key for r in p.runs if r.stage == "tokenizer"}
    stages = [r.stage for r in p.runs]
    order = {"tokenizer": 0, "pretrain": 1}
    assert stages == sorted(stages, key=lambda s: order.get(s, 2))  # what others wait for first
    for run in p.runs:
        assert all(isinstance(v, str) for v in run.labels.values())
        assert (run.study, run.scale) == (name, scale)
        assert run.name.startswith(f"{name}/")
        assert run.name.endswith(f"/{run.stage}") or run.name.split("/")[-2] == "partial"
        if run.stage == "tokenizer":
            assert set(run.labels) == {"data.augmentation"} and run.depends_on is None
            continue
        assert set(TABLE_AXES) <= set(run.labels)
        if run.stage == "pretrain":
            assert run.depends_on in tokenizers | {None}
            assert (run.depends_on is not None) == (run.config.target.kind == "dvae")
        elif run.stage == "scratch":
            assert run.depends_on is None
        else:
            assert run.depends_on in pretrains
        if run.stage == "partial":
            assert "partial.blocks" in run.labels
        assert (run.status == "unavailable") == (run.reason is not None)


@pytest.mark.parametrize("scale", ["micro", "tiny"])
def test_shared_baseline_is_one_pretraining(scale: str) -> None:
    ratio = run_named(plan("mask_ratio_sweep", scale), "ratio=0.75/seed0/pretrain")
    depth = run_named(plan("decoder_depth", scale), "depth=8/seed0/pretrain")
    sampling = run_named(plan("mask_sampling", scale), "sampler=random,ratio=0.75/seed0/pretrain")
    assert ratio.key == depth.key == sampling.key
    assert ratio.config == depth.config
    ft = run_named(plan("mask_ratio_sweep", scale), "ratio=0.75/seed0/finetune")
    assert ft.key == run_named(plan("decoder_depth", scale), "depth=8/seed0/finetune").key
    assert ft.depends_on == ratio.key
    other = run_named(plan("mask_ratio_sweep", scale), "ratio=0.5/seed0/pretrain")
    assert other.key != ratio.key


def test_scales_give_different_keys() -> None:
    micro = run_named(plan("mask_ratio_sweep", "micro"), "ratio=0.75/seed0/pretrain")
    tiny = run_named(plan("mask_ratio_sweep", "tiny"), "ratio=0.75/seed0/pretrain")
    assert micro.key != tiny.key
    assert micro.labels == tiny.labels  # the same paper labels


def test_labels_are_paper_values_configs_are_scale_values() -> None:
    width = run_named(plan("decoder_width", "tiny"), "width=128/seed0/linprobe")
    assert width.labels["decoder.width"] == "128" and width.config.decoder.width == 12
    assert width.labels["decoder.depth"] == "8" and width.config.decoder.depth == 2
    assert width.labels["pretrain.epochs"] == "800" and width.config.pretrain.epochs == 16
    sched = run_named(plan("training_schedule", "tiny"), "epochs=1600/seed0/pretrain")
    assert sched.labels["pretrain.epochs"] == "1600" and sched.config.pretrain.epochs == 32
    micro = run_named(plan("training_schedule", "micro"), "epochs=1600/seed0/pretrain")
    assert micro.labels["pretrain.epochs"] == "1600" and micro.config.pretrain.epochs == 20
    partial = run_named(plan("partial_finetune", "tiny"), "partial/blocks=24")
    assert partial.labels["partial.blocks"] == "24" and partial.config.partial.blocks == 4
    half = run_named(plan("partial_finetune", "tiny"), "partial/blocks=0.5")
    assert half.labels["partial.blocks"] == "0.5" and half.config.partial.blocks == 0.5
    token = run_named(plan("mask_token", "tiny"), "mask_tokens=True/seed0/pretrain")
    assert token.labels["encoder.mask_tokens"] == "True" and token.config.encoder.mask_tokens
    sampling = run_named(plan("mask_sampling", "tiny"), "sampler=block,ratio=0.5/seed0/finetune")
    assert (sampling.labels["masking.sampler"], sampling.labels["masking.ratio"]) == (
        "block",
        "0.5",
    )


@pytest.mark.parametrize("scale", ["micro", "tiny"])
def test_every_reconstruction_target_is_planned_with_the_tokenizer_first(scale: str) -> None:
    p = plan("reconstruction_target", scale)
    assert {r.status for r in p.runs} == {"new"}
    assert [r.stage for r in p.runs][:5] == ["tokenizer", *["pretrain"] * 4]
    tokenizer = run_named(p, "kind=dvae/tokenizer")
    dvae = run_named(p, "kind=dvae/seed0/pretrain")
    assert dvae.depends_on == tokenizer.key == run_key(dvae.config, "tokenizer")
    assert tokenizer.config.tokenizer.kind == "dvae"
    for kind in ("pixel", "norm_pixel", "pca"):
        assert run_named(p, f"kind={kind}/seed0/pretrain").depends_on is None
    pca = run_named(p, "kind=pca/seed0/pretrain").config
    assert pca.target.pca_components == 2  # 1/8 of the patch dimension, at least 2
    for stage in ("finetune", "linprobe"):
        assert run_named(p, f"kind=dvae/seed0/{stage}").depends_on == dvae.key
    assert all(
        r.labels["target.kind"] == r.config.target.kind
        for r in p.runs
        if r.labels.get("target.kind")
    )


def test_pretrainings_that_share_a_tokenizer_plan_it_once() -> None:
    p = plan("mask_ratio_sweep", "micro", seeds=[0, 1], overrides=["target.kind=dvae"])
    (tokenizer,) = [r for r in p.runs if r.stage == "tokenizer"]
    pretrains = [r for r in p.runs if r.stage == "pretrain"]
    assert len(pretrains) == 20 and {r.depends_on for r in pretrains} == {tokenizer.key}
    assert p.runs[0] is tokenizer and tokenizer.name == "mask_ratio_sweep/ratio=0.1/tokenizer"
    other = plan("mask_ratio_sweep", "micro", overrides=["target.kind=dvae", "tokenizer.epochs=3"])
    assert run_named(other, "ratio=0.1/tokenizer").key != tokenizer.key
    pixel = plan("mask_ratio_sweep", "micro")
    assert not [r for r in pixel.runs if r.stage == "tokenizer"]


def test_tokenizer_settings_change_only_the_keys_that_read_them(micro) -> None:
    def keys(**changes):
        cfg = micro(**changes)
        return run_key(cfg, "pretrain"), run_key(cfg, "finetune"), run_key(cfg, "tokenizer")

    pixel = keys()
    # A scale's PCA width, vocabulary and tokenizer leave every other kind's keys alone.
    for change in (
        {"tokenizer.epochs": 3},
        {"tokenizer.kind": "dalle"},
        {"target.dvae_vocab": 16},
        {"target.pca_components": 3},
    ):
        assert keys(**change)[:2] == pixel[:2], change
    dvae = keys(**{"target.kind": "dvae"})
    assert keys(**{"target.kind": "dvae", "tokenizer.epochs": 3})[0] != dvae[0]
    assert keys(**{"target.kind": "dvae", "target.dvae_vocab": 16})[2] != dvae[2]
    assert keys(**{"target.kind": "dvae", "data.augmentation": "none"})[2] != dvae[2]
    # The tokenizer reads the data and its own settings, not the MAE's.
    assert keys(**{"target.kind": "dvae", "masking.ratio": 0.5})[2] == dvae[2]
    assert keys(**{"target.kind": "dvae", "pretrain.epochs": 3})[2] == dvae[2]
    pca = keys(**{"target.kind": "pca"})
    assert keys(**{"target.kind": "pca", "target.pca_components": 3})[0] != pca[0]


def test_pca_width_is_checked_against_the_patch(micro) -> None:
    with pytest.raises(ConfigError) as err:
        micro(**{"target.kind": "pca", "target.pca_components": 5})
    assert err.value.key == "target.pca_components" and "patch dimension 4" in err.value.allowed
    assert micro(**{"target.pca_components": 96}).target.kind == "pixel"  # unread: not checked


def test_the_dalle_tokenizer_needs_a_local_weights_file(tmp_path) -> None:
    sets = ["data.root=/data/imagenet", "tokenizer.weights=" + str(tmp_path / "encoder.pkl")]
    with pytest.raises(ConfigError) as err:
        plan("reconstruction_target", "paper", overrides=sets)
    assert err.value.key == "tokenizer.weights" and "--set tokenizer.weights=" in err.value.allowed
    (tmp_path / "encoder.pkl").write_bytes(b"weights")
    p = plan("reconstruction_target", "paper", overrides=sets)
    dvae = run_named(p, "kind=dvae/seed0/pretrain")
    assert dvae.depends_on is None and not [r for r in p.runs if r.stage == "tokenizer"]
    assert dvae.config.tokenizer.kind == "dalle"
    cfg = validate_config(dvae.config.model_dump())
    assert run_key(cfg, "pretrain") == dvae.key


def test_labels_without_counterpart_at_a_scale_are_unavailable() -> None:
    tiny = plan("decoder_depth", "tiny")
    missing = {r.labels["decoder.depth"] for r in tiny.runs if r.status == "unavailable"}
    assert missing == {"2", "4"}
    assert run_named(tiny, "depth=2/seed0/pretrain").reason == (
        "decoder.depth=2 has no counterpart at scale tiny (its maps)"
    )
    # At small (a 4-block baseline decoder) every Table 1a row exists.
    small = plan("decoder_depth", "small", overrides=["data.root=/data/cifar10"])
    assert {r.status for r in small.runs} == {"new"}
    assert sorted(r.config.decoder.depth for r in small.runs if r.stage == "pretrain") == [
        1,
        2,
        3,
        4,
        6,
    ]
    partial = plan("partial_finetune", "tiny")
    available = {
        r.labels["partial.blocks"]
        for r in partial.runs
        if r.stage == "partial" and r.status == "new"
    }
    assert available == {"0.5", "6", "12", "18", "24"}  # 0 blocks is the linprobe run
    (probe,) = [r for r in partial.runs if r.stage == "linprobe"]
    baseline = run_named(plan("mask_ratio_sweep", "tiny"), "ratio=0.75/seed0/linprobe")
    assert probe.key == baseline.key  # the Table 1 baseline's probe, not a run of its own


def test_scratch_has_no_pretraining() -> None:
    p = plan("scratch_baseline", "micro")
    assert [(r.stage, r.depends_on) for r in p.runs] == [("scratch", None)]


def test_transfer_shares_the_pretraining_but_not_the_evaluations() -> None:
    transfer = plan("transfer_classification", "tiny")
    baseline = plan("mask_ratio_sweep", "tiny")
    pre = run_named(transfer, "seed0/pretrain")
    assert pre.key == run_named(baseline, "ratio=0.75/seed0/pretrain").key
    ft = run_named(transfer, "seed0/finetune")
    assert ft.config.finetune.dataset == "digits" and ft.config.data.dataset == "fashion_mnist"
    assert ft.key != run_named(baseline, "ratio=0.75/seed0/finetune").key


def test_seeds_and_set_overrides() -> None:
    p = plan("mask_token", "micro", seeds=[0, 1], overrides=["pretrain.epochs=1600"])
    pre = [r for r in p.runs if r.stage == "pretrain"]
    assert len(pre) == 4 and len(p.runs) == 12
    assert {r.config.pretrain.seed for r in pre} == {0, 1}
    seed1 = run_named(p, "mask_tokens=False/seed1/finetune")
    assert seed1.config.finetune.seed == 1 and seed1.config.pretrain.seed == 1
    assert all(
        r.config.pretrain.epochs == 20 and r.labels["pretrain.epochs"] == "1600" for r in pre
    )
    # A value outside the map passes through as a scale value; its label is the inverse map of the
    # value, so a run identical to a mapped one (3 epochs = paper 200 at micro) has its label.
    raw = plan("mask_token", "micro", overrides={"pretrain.epochs": 4})
    assert {(r.config.pretrain.epochs, r.labels["pretrain.epochs"]) for r in raw.runs} == {(4, "4")}
    same = plan("mask_token", "micro", overrides={"pretrain.epochs": 3})
    mapped = plan("mask_token", "micro", overrides={"pretrain.epochs": 200})
    assert [r.key for r in same.runs] == [r.key for r in mapped.runs]
    assert {r.labels["pretrain.epochs"] for r in same.runs} == {"200"}


def test_set_cannot_override_a_swept_key() -> None:
    with pytest.raises(ConfigError) as err:
        plan("mask_ratio_sweep", "micro", overrides=["masking.ratio=0.5"])
    assert (err.value.source, err.value.key) == ("--set", "masking.ratio")


def test_statuses_come_from_mlflow(tracking_uri: str) -> None:
    p = plan("mask_ratio_sweep", "micro")
    experiment = track.init_store(tracking_uri, "micro")

    def tracked(suffix: str, study: str, status: str | None) -> str:
        tags = {"study": study, "scale": "micro"}
        return tracked_run(tracking_uri, experiment, run_named(p, suffix), status, tags)

    done = tracked("ratio=0.75/seed0/pretrain", "decoder_depth", "FINISHED")
    tracked("ratio=0.5/seed0/pretrain", "mask_ratio_sweep", "FAILED")
    tracked("ratio=0.9/seed0/pretrain", "mask_ratio_sweep", "KILLED")
    tracked("ratio=0.1/seed0/pretrain", "mask_ratio_sweep", None)  # still RUNNING: interrupted
    status = plan("mask_ratio_sweep", "micro", tracking_uri=tracking_uri)
    assert status.experiment_id == experiment
    by_name = {r.name.split("/", 1)[1]: r for r in status.runs}
    baseline = by_name["ratio=0.75/seed0/pretrain"]
    assert (baseline.status, baseline.run_id, baseline.shared_with) == (
        "finished",
        done,
        ("decoder_depth",),
    )
    assert by_name["ratio=0.5/seed0/pretrain"].status == "failed"
    assert by_name["ratio=0.9/seed0/pretrain"].status == "resumable"
    assert by_name["ratio=0.1/seed0/pretrain"].status == "resumable"
    assert by_name["ratio=0.5/seed0/pretrain"].shared_with == ()
    assert status.counts() == {"new": 26, "finished": 1, "failed": 1, "resumable": 2}
    # launched: new and resumable runs, except the two evaluations of the failed pre-training
    pending = {r.name for r in select_runs(status.runs)[0]}
    assert len(pending) == 26 and baseline.name not in pending
    assert "mask_ratio_sweep/ratio=0.5/seed0/finetune" not in pending
    assert len(select_runs(status.runs, retry_failed=True)[0]) == 29


def test_status_lookup_on_an_empty_store_finds_nothing(tracking_uri: str) -> None:
    track.init_store(tracking_uri, "tiny")  # another scale's experiment only
    p = plan("demo", "micro", tracking_uri=tracking_uri)
    assert set(p.counts()) == {"new"} and p.experiment_id is None


def test_mark_shared_names_other_studies() -> None:
    p = plan("decoder_width", "micro")
    others = [plan(n, "micro") for n in ("mask_ratio_sweep", "mask_token", "decoder_width")]
    shared = mark_shared(p, others)
    baseline = run_named(shared, "width=512/seed0/pretrain")
    assert baseline.shared_with == ("mask_ratio_sweep", "mask_token")
    assert run_named(shared, "width=128/seed0/pretrain").shared_with == ()
    again = mark_shared(replace(shared), others)
    assert run_named(again, "width=512/seed0/pretrain").shared_with == baseline.shared_with


def test_status_lookup_never_creates_a_store(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    p = replace(plan("scratch_baseline", "micro"), tracking_uri=uri)
    assert with_status(p) == p
    assert list(tmp_path.iterdir()) == []


def test_planning_a_thousand_point_study_is_fast() -> None:
    """10 x 10 x 10 grid, each pre-trained and fine-tuned: 2,000 runs."""
    raw = {
        "name": "big",
        "sweep": {
            "masking.ratio": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9],
            "decoder.width": [8 * i for i in range(1, 11)],
            "pretrain.blr": [1e-4 * i for i in range(1, 11)],
        },
        "evaluations": ["finetune"],
    }
    spec = parse_study(raw, "<generated>", "big")
    start = time.perf_counter()
    p = plan_study(spec, load_scale("micro"))
    elapsed = time.perf_counter() - start
    assert len(p.runs) == 2000 and len({r.key for r in p.runs}) == 2000
    assert elapsed < 15, f"planning 2,000 runs took {elapsed:.1f} s"
