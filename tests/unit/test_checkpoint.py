"""Checkpoints: atomic replacement (a crash or a full disk mid-write keeps the old file), checksums
that catch a damaged latest file (the previous one is used instead), and RNG round trips."""

from __future__ import annotations

import errno
import hashlib
import random

import numpy as np
import pytest
import torch

from mae.train import checkpoint
from mae.train.checkpoint import (
    Checkpointer,
    capture_rng,
    load_checkpoint,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)


def test_missing_checkpoint_loads_as_none(tmp_path):
    assert load_checkpoint(tmp_path / "checkpoint.pt") is None


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    state = {"model": {"w": torch.randn(3, 4)}, "epoch": 3, "config": "{}", "final": None}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert (loaded["epoch"], loaded["config"], loaded["final"]) == (3, "{}", None)


def test_crash_mid_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})
    before = path.read_bytes()

    real_save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # a torn write, then the process "dies"
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(checkpoint.torch, "save", save_half_then_die)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})

    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint.pt", "checkpoint.pt.sha256"]  # no temp file left


def test_every_checkpoint_has_its_checksum_and_keeps_the_one_before(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    for name, epoch in (("checkpoint.pt", 2), ("checkpoint.prev.pt", 1)):
        digest, file = (tmp_path / f"{name}.sha256").read_text().split()
        assert digest == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert file == "checkpoint.pt"  # `sha256sum -c` format, as written for the latest
        assert torch.load(tmp_path / name, weights_only=True)["epoch"] == epoch


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_latest_checkpoint_gives_way_to_the_previous(tmp_path, damage, caplog):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})
    save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 3]
    path.write_bytes(bytes(data))

    state, note = read_checkpoint(path)
    assert state["epoch"] == 1 and "checksum" in note and "previous checkpoint (epoch 1)" in note
    assert "checksum" in caplog.text  # a warning, not silence
    assert load_checkpoint(path)["epoch"] == 1


def test_a_full_disk_while_writing_leaves_the_latest_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})
    before = path.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})
    assert path.read_bytes() == before
    state, note = read_checkpoint(path)
    assert state["epoch"] == 1 and note is None
    assert not list(tmp_path.glob(".*tmp"))


def test_when_nothing_is_intact_the_run_starts_over_and_says_why(tmp_path, micro):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="no intact checkpoint"):
        load_checkpoint(path)
    checkpointer = Checkpointer(tmp_path, "pretrain", "k", micro())
    assert checkpointer.load() is None
    assert "started over" in checkpointer.recovered
    assert (tmp_path / "checkpoint.pt.corrupt").exists() and not path.exists()


def _draws() -> tuple:
    return torch.rand(4), np.random.rand(4), random.random(), np.random.normal()


def test_rng_streams_continue_after_restore(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng()})
    first = _draws()
    _draws()
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"])  # through weights_only torch.load
    again = _draws()
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]
