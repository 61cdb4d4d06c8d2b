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

Every checkpoint has its sha256 beside it, and the one it replaced is kept as
`checkpoint.prev.pt`: a latest file that is corrupt or truncated (a full disk, a copy cut short,
bit rot) is detected on load and the previous one used instead, with a warning the run records.
"""

from __future__ import annotations

import hashlib
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
import torch.distributed as dist
from torch import nn

from mae.config import ExperimentConfig, canonical_json
from mae.paths import CHECKPOINT
from mae.train.runtime import DistInfo, seed_everything

log = logging.getLogger(__name__)

RECOVERY_TAG = "checkpoint_recovered"  # the run tag saying why its latest checkpoint was not used


def previous_of(path: Path) -> Path:
    """Where the checkpoint before `path` is kept: `checkpoint.prev.pt`."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def checksum_of(path: Path) -> Path:
    """The checksum beside a checkpoint, in `sha256sum` format: `checkpoint.pt.sha256`."""
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace(src: Path, dst: Path) -> None:
    """Rename if `src` exists (another rank may have renamed it first)."""
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        pass


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` so that a reader always finds an intact checkpoint.

    The new file is written to a temporary name, flushed to disk and verified against its
    checksum; only then does the checkpoint it replaces become `checkpoint.prev.pt` and the new one
    take its name, each with its checksum beside it. A crash or a full disk at any point leaves
    the latest or the previous checkpoint intact, never half of one under either name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256(tmp)
        torch.load(tmp, map_location="cpu", weights_only=True)  # readable before it counts
        _replace(path, previous_of(path))
        _replace(checksum_of(path), checksum_of(previous_of(path)))
        _write_atomically(checksum_of(path), f"{digest}  {path.name}\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    """Make the renames themselves durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _intact(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(state, None) when `path` loads and matches its checksum, else (None, why not)."""
    if not path.exists():
        return None, f"{path.name} is missing"
    recorded = checksum_of(path)
    if recorded.exists():
        expected = recorded.read_text().split()[0] if recorded.read_text().strip() else ""
        if _sha256(path) != expected:
            return None, f"{path.name} does not match its checksum (corrupt or truncated)"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as exc:  # a truncated zip, a foreign file: all the same to a resume
        return None, f"{path.name} cannot be read ({type(exc).__name__})"


def read_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The newest intact checkpoint at `path` and, when it is not the latest file, why: the
    latest is used when it matches its checksum, else the previous one. (None, None) when the
    run has no checkpoint; (None, why) when none is intact."""
    path = Path(path)
    if not path.exists() and not previous_of(path).exists():
        return None, None
    state, problem = _intact(path)
    if problem is None:
        return state, None
    older, older_problem = _intact(previous_of(path))
    if older_problem is None:
        note = f"{problem}; resumed from the previous checkpoint (epoch {older.get('epoch')})"
        log.warning("%s: %s", path, note)
        return older, note
    log.warning("%s: %s, and %s", path, problem, older_problem)
    return None, f"{problem}, and {older_problem}"


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint at `path` (see `read_checkpoint`), or None when there is
    none; raises when files exist but none of them is intact."""
    state, problem = read_checkpoint(path)
    if state is None and problem is not None:
        raise ValueError(f"{path}: no intact checkpoint: {problem}")
    return state


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


def gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state in rank order (a collective: call it on every rank), so that each
    rank of a resumed run continues its own streams."""
    state = capture_rng()
    if info.world_size == 1:
        return [state]
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


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
        self.recovered: str | None = None  # why the latest checkpoint could not be used

    def load(self) -> Progress | None:
        """The saved progress (None before the first checkpoint); refuses another run's file.

        A damaged latest checkpoint gives way to the previous one; when none is intact the damaged
        files are set aside (`*.corrupt`) and the run starts over. Either way `self.recovered`
        says what happened, for the run's record."""
        self.state, self.recovered = read_checkpoint(self.path)
        if self.state is None and self.recovered is not None:
            for damaged in (self.path, previous_of(self.path)):
                _replace(damaged, damaged.with_name(damaged.name + ".corrupt"))
            self.recovered += "; started over"
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
