"""Checkpoints: atomic replacement (a crash mid-write keeps the old file) and RNG round trips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mae.train import checkpoint
from mae.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint


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
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


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
