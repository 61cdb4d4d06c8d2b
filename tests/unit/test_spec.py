"""Study files and scale files: the schema, the shipped files, and the paper-label maps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mae.config import TABLE_AXES, run_key, validate_config
from mae.schema import ConfigError
from mae.sweep.scale import available_scales, label_str, load_scale
from mae.sweep.spec import available_studies, load_study, parse_study

SCALES = ("micro", "tiny", "small", "paper")
PAPER_BASELINE = {
    "masking.ratio": "0.75",
    "masking.sampler": "random",
    "decoder.depth": "8",
    "decoder.width": "512",
    "encoder.mask_tokens": "False",
    "target.kind": "pixel",
    "data.augmentation": "crop_rand",
    "pretrain.epochs": "800",
}
PAPER_EXPERIMENTS = {
    "mask_ratio_sweep": "Figure 5",
    "decoder_depth": "Table 1a",
    "decoder_width": "Table 1b",
    "mask_token": "Table 1c",
    "reconstruction_target": "Table 1d",
    "data_augmentation": "Table 1e",
    "mask_sampling": "Table 1f",
    "training_schedule": "Figure 7",
    "partial_finetune": "Figure 9",
    "wallclock": "Table 2",
}


def test_every_paper_experiment_has_a_study_file() -> None:
    studies = set(available_studies())
    expected = {*PAPER_EXPERIMENTS, "demo", "scratch_baseline", "transfer_classification"}
    assert expected <= studies
    for name, reference in PAPER_EXPERIMENTS.items():
        spec = load_study(name)
        assert spec.name == name
        assert spec.reproduces == reference
        assert len(spec.description) > 40


@pytest.mark.parametrize("name", available_studies())
def test_study_files_load_with_description_and_reference(name: str) -> None:
    spec = load_study(name)
    assert spec.description and spec.reproduces
    assert spec.scale in SCALES
    assert spec.source.endswith(f"studies/{name}.yaml")


def test_schema_shapes() -> None:
    raw = yaml.safe_load(
        """
        name: shapes
        sweep: {masking.ratio: [0.5, 0.75]}
        cases:
          - {masking: {sampler: random}}
          - {masking.sampler: block}
        evaluations: [finetune, {partial: {blocks: [0, 0.5, 24]}}, {linprobe: null}]
        seeds: [0, 1]
        overrides: {finetune: {epochs: 3}}
        """
    )
    spec = parse_study(raw, "<test>", "shapes")
    assert spec.sweep == {"masking.ratio": [0.5, 0.75]}
    assert spec.cases == [{"masking.sampler": "random"}, {"masking.sampler": "block"}]
    assert [(e.stage, e.grid) for e in spec.evaluations] == [
        ("finetune", {}),
        ("partial", {"blocks": [0, 0.5, 24]}),
        ("linprobe", {}),
    ]
    assert spec.overrides == {"finetune.epochs": 3}
    assert spec.seeds == [0, 1]
    assert spec.scale == "tiny"


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my_study.yaml"
    path.write_text("sweep: {masking.ratio: [0.5]}\n")
    assert load_study(path).name == "my_study"


def test_missing_study_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_study("no_such_study")
    assert "mask_ratio_sweep" in err.value.allowed and "decoder_depth" in err.value.allowed


@pytest.mark.parametrize("name", SCALES)
def test_scale_baseline_carries_the_paper_labels(name: str) -> None:
    """Each scale's base config is the paper's Table 1 baseline under its label maps."""
    scale = load_scale(name)
    cfg = validate_config(scale.config)
    labels = {}
    for key in TABLE_AXES:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        labels[key] = label_str(scale.label(key, value))
    assert labels == PAPER_BASELINE


def test_scale_values() -> None:
    micro, tiny, paper = (validate_config(load_scale(n).config) for n in ("micro", "tiny", "paper"))
    assert (micro.data.dataset, micro.image_side, micro.num_patches) == ("digits", 8, 16)
    assert (micro.runtime.threads, micro.runtime.progress) == (1, False)
    assert (tiny.data.dataset, tiny.num_patches, tiny.encoder.width) == ("fashion_mnist", 49, 96)
    pre = (tiny.pretrain.epochs, tiny.pretrain.batch_size, tiny.data.train_subset)
    assert pre == (16, 64, 5000)
    assert tiny.linprobe.pool == "avg"  # a scale choice (docs/calibration.md)
    assert tiny.pretrain.blr * tiny.pretrain.batch_size / 256 == pytest.approx(1e-3)
    assert tiny.scratch.epochs == 2 * tiny.finetune.epochs
    assert (paper.encoder.width, paper.encoder.depth, paper.num_patches) == (1024, 24, 196)
    assert (paper.pretrain.batch_size, paper.pretrain.blr, paper.pretrain.warmup_epochs) == (
        4096,
        1.5e-4,
        40,
    )
    assert (paper.finetune.drop_path, paper.linprobe.batch_size) == (0.2, 16384)
    assert paper.linprobe.augmentation == "crop_rand"  # the official probe's crop + flip
    assert paper.partial.schedules == [50, 100, 200]  # paper A.1: the best of three per k


@pytest.mark.parametrize("name", available_scales())
def test_decoder_width_labels_are_relative_to_the_encoder(name: str) -> None:
    """The paper's widths are of a 1024-d ViT-L: label 1024 is the encoder's own width, 512 half."""
    scale = load_scale(name)
    width = validate_config(scale.config).encoder.width
    for label in (128, 256, 512, 768, 1024):
        available, value = scale.lookup("decoder.width", label)
        assert available and value == label * width // 1024, (label, value)


def test_settings_without_effect_are_not_recorded() -> None:
    """With augmentation none the timm policy never runs: it is neither logged nor hashed."""
    plain = validate_config({"finetune": {"augmentation": "none", "randaug": "rand-m5-mstd0.5"}})
    assert (plain.finetune.randaug, plain.finetune.reprob) == (None, 0.0)
    other = validate_config({"finetune": {"augmentation": "none", "reprob": 0.5}})
    assert run_key(plain, "finetune") == run_key(other, "finetune")
    timm = validate_config({"finetune": {"augmentation": "timm", "reprob": 0.5}})
    assert timm.finetune.reprob == 0.5 and run_key(timm, "finetune") != run_key(other, "finetune")


def test_scale_maps_translate_both_ways() -> None:
    tiny = load_scale("tiny")
    assert tiny.lookup("decoder.width", 128) == (True, 12)
    assert tiny.lookup("pretrain.epochs", 1600) == (True, 32)
    assert tiny.lookup("decoder.depth", 2) == (False, None)  # no counterpart at tiny
    assert tiny.lookup("masking.ratio", 0.3) == (True, 0.3)  # unmapped keys pass through
    assert tiny.lookup("pretrain.epochs", 7) == (True, 7)  # unmapped labels pass through
    assert tiny.label("decoder.width", 12) == 128
    assert tiny.label("partial.blocks", 4.0) == 24
    assert label_str(tiny.label("partial.blocks", 0.5)) == "0.5"
    assert label_str(24.0) == "24" and label_str(True) == "True" and label_str(0.75) == "0.75"


@pytest.mark.parametrize(
    ("maps", "key", "allowed"),
    [
        ({"decoder.depth": {1: 1, 2: 1, 8: 2}}, "maps.decoder.depth", "distinct"),
        ({"decoder.width": {512: 48}}, "maps.decoder.width", "must be a mapped value"),
        ({"decoder.wdith": {512: 64}}, "maps.decoder.wdith", "dotted config key"),
    ],
)
def test_bad_scale_maps_are_refused(tmp_path: Path, maps: dict, key: str, allowed: str) -> None:
    path = tmp_path / "bad.yaml"
    config = {"model": {"preset": "vit_tiny_cpu"}}
    path.write_text(yaml.safe_dump({"name": "bad", "config": config, "maps": maps}))
    with pytest.raises(ConfigError) as err:
        load_scale(path)
    assert (err.value.source, err.value.key) == (str(path), key)
    assert allowed in err.value.allowed


def test_bad_scale_config_is_rekeyed(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nconfig: {masking: {ratio: 2}}\n")
    with pytest.raises(ConfigError) as err:
        load_scale(path)
    assert err.value.key == "config.masking.ratio" and "lt 1" in err.value.allowed
