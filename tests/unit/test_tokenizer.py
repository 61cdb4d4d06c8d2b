"""The dVAE target's tokenizers: the in-project dVAE trains as a stage of its own (it learns, keeps
its codebook in use, resumes exactly) and hands its weights to pre-training; the DALL-E encoder
runs end to end from a local weights file, and a missing file is one line naming the key."""

from __future__ import annotations

import math

import dall_e
import pytest
import torch
from support import RecordingLogger

from mae.model import build_mae, build_tokenizer
from mae.model.tokenizer import DalleTokenizer, DiscreteVAE
from mae.schema import ConfigError
from mae.train import visualize
from mae.train.checkpoint import load_checkpoint
from mae.train.pretrain import pretrain
from mae.train.tokenizer import (
    kl_to_uniform,
    load_tokenizer,
    measure,
    temperature_at,
    train_tokenizer,
)

DVAE = {"target.kind": "dvae", "runtime.recon_images": 2}
SHORT_PRETRAIN = {"pretrain.epochs": 2, "pretrain.batch_size": 64}


def test_temperature_anneals_exponentially_from_start_to_end():
    assert temperature_at(0.0, 1.0, 1 / 16) == 1.0
    assert temperature_at(0.5, 1.0, 1 / 16) == pytest.approx(0.25)
    assert temperature_at(1.0, 1.0, 1 / 16) == pytest.approx(1 / 16)
    assert temperature_at(2.0, 1.0, 1 / 16) == pytest.approx(1 / 16)  # held after the end


def test_kl_to_the_uniform_prior():
    assert kl_to_uniform(torch.zeros(2, 8, 3, 3)).item() == pytest.approx(0.0, abs=1e-6)
    peaked = torch.full((1, 8, 1, 1), -1e4)
    peaked[0, 3] = 0.0
    assert kl_to_uniform(peaked).item() == pytest.approx(math.log(8), rel=1e-5)


def test_perplexity_is_one_for_a_collapsed_codebook_and_the_vocabulary_for_uniform_use():
    tokenizer = DiscreteVAE(channels=1, patch_size=2, vocab=4, hidden=8)
    with torch.no_grad():  # every patch the same code: the logits ignore the image
        last = tokenizer.encoder[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    numbers = measure(tokenizer, torch.randn(16, 1, 4, 4))
    assert numbers["perplexity"] == pytest.approx(1.0) and numbers["codes_used"] == 0.25


def test_micro_dvae_learns_and_keeps_its_codebook_in_use(micro, tmp_path):
    cfg = micro(DVAE, **{"tokenizer.epochs": 6})
    probe = visualize.preview_images(cfg, 256)
    torch.manual_seed(cfg.tokenizer.seed)
    untrained = measure(build_tokenizer(cfg), probe)
    logger = RecordingLogger()
    result = train_tokenizer(cfg, tmp_path, logger)

    print("micro dVAE:", untrained, "->", result)
    # Observed: recon 1.05 -> 0.29, perplexity 9 of 64 codes after 6 epochs (31 after 20).
    assert result["tokenizer/recon_mse"] < 0.5 * untrained["recon_mse"]
    assert result["tokenizer/perplexity"] > 4.0
    assert result["tokenizer/epochs"] == 6.0 and result["tokenizer/wall_time_s"] > 0
    assert [step for step, _ in logger.metrics] == list(range(1, 7))
    assert {
        "tokenizer/loss",
        "tokenizer/kl",
        "tokenizer/temperature",
        "tokenizer/perplexity",
    } <= set(logger.metrics[0][1])
    temperatures = logger.series("tokenizer/temperature")
    assert temperatures == sorted(temperatures, reverse=True)
    assert logger.artifacts and (tmp_path / "reconstruction.png").stat().st_size > 0
    assert train_tokenizer(cfg, tmp_path, RecordingLogger()) == result  # finished: just reports


@pytest.mark.slow
def test_tokenizer_stop_and_resume_is_bit_identical(micro, tmp_path):
    cfg = micro(DVAE, **{"tokenizer.epochs": 3, "runtime.recon_images": 0})
    full = train_tokenizer(cfg, tmp_path / "straight")
    stopped = train_tokenizer(cfg, tmp_path / "resumed", stop_after_epoch=1)
    assert stopped["tokenizer/epochs"] == 1
    assert train_tokenizer(cfg, tmp_path / "resumed", stop_after_epoch=1) == stopped  # no work
    resumed = train_tokenizer(cfg, tmp_path / "resumed")
    assert {k: v for k, v in resumed.items() if "time" not in k} == {
        k: v for k, v in full.items() if "time" not in k
    }
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_dvae_pretraining_reads_the_finished_tokenizer(micro, tmp_path):
    cfg = micro(DVAE, SHORT_PRETRAIN, **{"tokenizer.epochs": 1})
    with pytest.raises(FileNotFoundError, match="tokenizer stage to run first"):
        pretrain(cfg, tmp_path / "early", tokenizer_checkpoint=tmp_path / "tok" / "checkpoint.pt")
    train_tokenizer(cfg, tmp_path / "tok", stop_after_epoch=1)  # stopped: not finished
    other = micro(DVAE, SHORT_PRETRAIN, **{"tokenizer.epochs": 1, "tokenizer.kl_weight": 0.5})
    with pytest.raises(FileNotFoundError, match="no finished tokenizer"):  # another tokenizer
        pretrain(other, tmp_path / "other", tokenizer_checkpoint=tmp_path / "tok" / "checkpoint.pt")

    tokenizer_state = load_checkpoint(tmp_path / "tok" / "checkpoint.pt")["model"]
    result = pretrain(
        cfg, tmp_path / "pre", tokenizer_checkpoint=tmp_path / "tok" / "checkpoint.pt"
    )
    assert math.isfinite(result["pretrain/loss"])
    model = load_checkpoint(tmp_path / "pre" / "checkpoint.pt")["model"]
    for name, value in tokenizer_state.items():
        assert torch.equal(model[f"target.tokenizer.{name}"], value)
    assert (tmp_path / "pre" / "reconstruction.png").exists()  # drawn through the dVAE decoder


# ----------------------------------------------------------------------------- DALL-E


def test_missing_dalle_weights_are_one_line_naming_the_key(micro, tmp_path):
    tokenizer = DalleTokenizer(channels=1, grid=4)
    cfg = micro(DVAE, **{"tokenizer.kind": "dalle", "tokenizer.weights": str(tmp_path / "no.pkl")})
    with pytest.raises(ConfigError) as err:
        load_tokenizer(tokenizer, cfg, None)
    assert err.value.key == "tokenizer.weights" and "\n" not in str(err.value)
    assert "nothing is downloaded" in str(err.value)


@pytest.mark.parametrize("saved_as", ["state_dict", "module"])
def test_a_random_dalle_encoder_runs_end_to_end(micro, tmp_path, saved_as):
    """No download: a randomly initialised `dall_e.Encoder` saved the two ways a user may have it
    (the official encoder.pkl pickles the module), then a short pre-training through it."""
    torch.manual_seed(0)
    encoder = dall_e.Encoder()
    weights = tmp_path / "encoder.pkl"
    torch.save(encoder.state_dict() if saved_as == "state_dict" else encoder, weights)
    sets = {"tokenizer.kind": "dalle", "tokenizer.weights": str(weights)}
    cfg = micro(DVAE, SHORT_PRETRAIN, sets, **{"data.train_subset": 8, "pretrain.epochs": 1})
    cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"batch_size": 4})})

    model = build_mae(cfg)
    assert isinstance(model.target.tokenizer, DalleTokenizer) and model.target.out_dim == 8192
    load_tokenizer(model.target.tokenizer, cfg, None)
    assert torch.equal(model.target.tokenizer.encoder.blocks.input.w, encoder.blocks.input.w)
    images = torch.randn(2, 1, 8, 8)
    logits = model.target.tokenizer.logits(images)  # 8x8 digits -> 32x32 RGB -> 4x4 codes
    assert logits.shape == (2, 8192, 4, 4)
    tokens = model.target(model.patchify(images))
    assert tokens.shape == (2, 16) and 0 <= tokens.min() and tokens.max() < 8192
    out = model(images)
    assert out.pred.shape == (2, 16, 8192) and torch.isfinite(out.loss)

    result = pretrain(cfg, tmp_path / "pre")
    assert math.isfinite(result["pretrain/loss"]) and result["pretrain/epochs"] == 1.0
    assert not (tmp_path / "pre" / "reconstruction.png").exists()  # DALL-E's tokens: no decoder
