"""Where and how a run executes: threads, device, precision, seeds, progress bars, process groups.

None of this changes results on the CPU, which is why `cfg.runtime` is outside content keys.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from mae.config import RuntimeConfig
from mae.paths import project_root

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed every global stream a run draws from (init, masks, augmentation, Mixup's numpy)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def prepare(runtime: RuntimeConfig, local_rank: int = 0) -> torch.device:
    """Set this process's CPU threads and return the device its run uses."""
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    return resolve_device(runtime, local_rank)


def resolve_device(runtime: RuntimeConfig, local_rank: int = 0) -> torch.device:
    """`auto` is this process's GPU when there is one (one per rank under DDP), else the CPU."""
    if runtime.device not in ("auto", "cuda"):
        return torch.device(runtime.device)
    if runtime.device == "cuda" or torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_precision(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32; `auto` means bf16 on CUDA only."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision where asked for; bf16 needs no loss scaling."""
    dtype = resolve_precision(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_compile(device: torch.device, setting: bool | None) -> bool:
    """`runtime.compile`: an explicit setting wins; None compiles on CUDA only. On this project's
    CPUs compiling paid nothing (tiny step 1.00x, ViT-B step see docs/benchmarks.md) for minutes
    of compile time (`python -m benchmarks --only choices --compile`)."""
    return setting if setting is not None else device.type == "cuda"


def compiled(model: nn.Module, device: torch.device, setting: bool | None) -> nn.Module:
    """`model` under `torch.compile` when `resolve_compile` says so. Inductor's cache goes to
    `<project>/.cache/torchinductor` unless TORCHINDUCTOR_CACHE_DIR says otherwise: every job of a
    sweep (same shapes, same code) then loads the first one's kernels instead of compiling."""
    if not resolve_compile(device, setting):
        return model
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR", str(project_root() / ".cache" / "torchinductor")
    )
    return torch.compile(model)


def progress_enabled(setting: bool | None) -> bool:
    """An explicit setting wins; otherwise on for an interactive terminal outside CI."""
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(iterable: Iterable[T], enabled: bool | None = None, **kw: Any) -> Iterator[T]:
    """A tqdm bar over `iterable` (kwargs go to tqdm), or the bare iterable when off."""
    return tqdm(iterable, disable=not progress_enabled(enabled), dynamic_ncols=True, **kw)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group described by RANK/WORLD_SIZE/LOCAL_RANK (torchrun, or submitit's
    `TorchDistributedEnvironment().export()`); a lone process gets the trivial DistInfo.

    The group is made once per process and lives until it exits: the next stage of the same
    script finds it joined. (A group destroyed and made again in one process would read its
    predecessor's stale addresses from torchrun's store.)"""
    joined = dist.is_available() and dist.is_initialized()
    if not joined and int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)  # NCCL collectives run on the current device
    if not joined:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(dist.destroy_process_group)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def current_dist() -> DistInfo:
    """This process's place in the group it has joined, without joining one (trivial if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """`tensor` summed over every rank, in place (as it is in a lone process). Under NCCL it must
    live on this rank's GPU."""
    if info.world_size > 1:
        dist.all_reduce(tensor)
    return tensor
