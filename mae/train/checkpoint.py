"""Checkpoint and resume: the one component that pre-training and every evaluation share.

A run keeps one file, `<workdir>/checkpoint.pt`, a dict that `torch.load(weights_only=True)`
reads back:

    stage, key, config      which run it is (content key, canonical JSON of the config)
    epoch, step             completed epochs and optimizer steps
    model, optimizer        state dicts
    rng                     every rank's RNG streams (rank order), for an exact resume
    history                 one dict of numbers per completed epoch
    elapsed_s               seconds spent in earlier processes of the run
    final                   None while the run trains; its result once it has finished

Writes are atomic (temporary file, fsync, rename), so a reader sees the previous checkpoint or the
new one, never half of one.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mae.config import ExperimentConfig, canonical_json
from mae.paths import CHECKPOINT
from mae.train.runtime import DistInfo, seed_everything

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace `path` with `state` (temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path` on the CPU, or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng() -> dict[str, Any]:
    """Every RNG stream a run draws from: torch (CPU, CUDA), numpy and Python's `random`."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Continue the streams saved by `capture_rng`."""
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _as_tuples(value: Any) -> Any:
    """`random.setstate` insists on tuples; a round trip may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


@dataclass
class Progress:
    """What a training loop carries from epoch to epoch besides its model and optimizer."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps
    history: list[dict[str, float]] = field(default_factory=list)  # numbers of each epoch
    elapsed_s: float = 0.0  # seconds spent by earlier processes of this run
    final: dict[str, float] | None = None  # the result, once the run has finished

    def advance(self, numbers: dict[str, float], steps: int) -> int:
        """Record one completed epoch of `steps` optimizer steps; returns the epochs done."""
        self.history.append(dict(numbers))
        self.epoch += 1
        self.step += steps
        return self.epoch


class Checkpointer:
    """Loads, validates and writes the checkpoint of one run (stage + content key) in `workdir`."""

    def __init__(self, workdir: Path, stage: str, key: str, cfg: ExperimentConfig):
        self.path = Path(workdir) / CHECKPOINT
        self.stage, self.key, self.config = stage, key, canonical_json(cfg)
        self.started = time.perf_counter()
        self.state: dict[str, Any] | None = None

    def load(self) -> Progress | None:
        """The saved progress (None before the first checkpoint); refuses another run's file."""
        self.state = load_checkpoint(self.path)
        if self.state is None:
            return None
        if self.state["key"] != self.key:
            raise ValueError(
                f"{self.path} belongs to {self.state['stage']} run {self.state['key'][:12]}, "
                f"not to this config's {self.stage} run {self.key[:12]}: use another workdir or "
                "remove the checkpoint"
            )
        fields = ("epoch", "step", "history", "elapsed_s", "final")
        return Progress(**{name: self.state[name] for name in fields})

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> None:
        """Load the model and optimizer of the last `load()` and continue this rank's RNG."""
        assert self.state is not None, "restore() needs a checkpoint found by load()"
        model.load_state_dict(self.state["model"])
        optimizer.load_state_dict(self.state["optimizer"])
        rngs = self.state["rng"]
        if len(rngs) == info.world_size:
            restore_rng(rngs[info.rank])
        else:  # another number of processes: the global batch holds, exactness cannot
            log.warning(
                "checkpoint from %d processes resumed on %d: fresh RNG streams, not exact",
                len(rngs),
                info.world_size,
            )
            seed_everything(1000 * self.state["epoch"] + info.rank)
        log.info("%s %s resumes after epoch %d", self.stage, self.key[:12], self.state["epoch"])

    def elapsed(self, progress: Progress) -> float:
        """Seconds this run has spent, over every process that worked on it."""
        return progress.elapsed_s + time.perf_counter() - self.started

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        progress: Progress,
        rngs: list[dict[str, Any]],
    ) -> None:
        """Write the run's whole state (call on one rank only)."""
        save_checkpoint(
            self.path,
            {
                "stage": self.stage,
                "key": self.key,
                "config": self.config,
                "epoch": progress.epoch,
                "step": progress.step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rngs,
                "history": progress.history,
                "elapsed_s": self.elapsed(progress),
                "final": progress.final,
            },
        )
