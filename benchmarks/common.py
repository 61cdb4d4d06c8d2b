"""What every benchmark shares: whether other processes used the CPU meanwhile (`LoadProbe`),
interleaved timing of compared variants in one process (`interleaved`), the machine's own matmul
peak on the same threads (`matmul_peak`), and a part's result (`Part`)."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def clock_name(requested: str, threads: int, device: str = "cpu") -> str:
    """`auto`: a single-threaded CPU run divides by this process's CPU time, which other jobs on a
    shared machine cannot stretch; anything else by wall time."""
    if requested != "auto":
        return requested
    return "cpu" if threads == 1 and device == "cpu" else "wall"


def _machine_busy_s() -> float:
    """CPU-seconds all processes of the machine have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU-seconds of this process and of the children it has waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class Load:
    """What the machine did while a benchmark ran, beside what the benchmark itself did."""

    wall_s: float
    own_cpu_s: float
    machine_cpu_s: float
    cores: int
    loadavg_before: float
    loadavg_after: float

    @property
    def other_cpu_s(self) -> float:
        return max(0.0, self.machine_cpu_s - self.own_cpu_s)

    @property
    def other_share(self) -> float:
        """Share of the machine's cores that other processes kept busy."""
        return self.other_cpu_s / max(self.wall_s * self.cores, 1e-9)

    def line(self) -> str:
        quiet = "quiet" if self.other_share < 0.05 else "SHARED"
        return (
            f"{quiet}: other processes used {self.other_cpu_s:.1f} CPU-s in {self.wall_s:.1f} s "
            f"wall ({self.other_share:.0%} of {self.cores} cores); this benchmark "
            f"{self.own_cpu_s:.1f} CPU-s; load average {self.loadavg_before:.2f} -> "
            f"{self.loadavg_after:.2f}"
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": self.wall_s,
            "own_cpu_s": self.own_cpu_s,
            "other_cpu_s": self.other_cpu_s,
            "other_share": self.other_share,
            "cores": self.cores,
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
        }


class LoadProbe:
    """`with LoadProbe() as probe: ...`, then `probe.load`."""

    load: Load

    def __enter__(self) -> LoadProbe:
        self._wall, self._own, self._busy = time.perf_counter(), _own_cpu_s(), _machine_busy_s()
        self._avg = os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.load = Load(
            wall_s=time.perf_counter() - self._wall,
            own_cpu_s=_own_cpu_s() - self._own,
            machine_cpu_s=_machine_busy_s() - self._busy,
            cores=os.cpu_count() or 1,
            loadavg_before=self._avg,
            loadavg_after=os.getloadavg()[0],
        )


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    reps: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    calls: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each variant. Every repetition times each variant for `calls` calls,
    in an order rotated by one per repetition, after `warmup` discarded repetitions: drifting
    load hits every variant alike, so their ratios hold even on a busy machine."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            sync(device)
            start = clock()
            for _ in range(calls):
                variants[name]()
            sync(device)
            if rep >= warmup:
                samples[name].append((clock() - start) / calls)
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def matmul_peak(
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    size: int = 1024,
    reps: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """GFLOP/s of `torch.mm` on two size x size matrices on the current threads: the best of
    `reps` timings, so the limit that every figure is a fraction of."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    calls = max(1, int(2e9 // (2 * size**3))) if torch.device(device).type == "cpu" else 50
    if dtype != torch.float32 and torch.device(device).type == "cpu":
        calls = 1  # emulated bf16 can be 100x slower
    samples = interleaved({"mm": lambda: torch.mm(a, b)}, reps, 1, clock, calls, device)["mm"]
    return 2 * size**3 / min(samples) / 1e9


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX), from /proc/cpuinfo."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Part:
    """One benchmark's outcome: tables (Markdown), raw rows (JSON), the load it ran under."""

    name: str
    title: str
    load: Load | None = None
    tables: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, rows: list[dict[str, Any]], columns: Mapping[str, str] | None = None) -> None:
        frame = pd.DataFrame(rows)
        if columns:
            frame = frame[[c for c in columns if c in frame]].rename(columns=dict(columns))
        self.tables.append(frame.to_markdown(index=False, floatfmt=".4g"))
        self.rows.extend(rows)

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.load is not None:
            lines += [f"Load: {self.load.line()}", ""]
        for table in self.tables:
            lines += [table, ""]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"
