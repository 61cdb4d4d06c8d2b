"""A launch in progress: which runs wait, run, finished or failed (`Progress`), and the one line
that shows it (`Summary`), redrawn in place on a terminal and logged otherwise."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TextIO

import submitit

from mae.config import EVAL_STAGES
from mae.jobs import JobSpec, Worker, read_progress_record
from mae.sweep.plan import stage_noun

log = logging.getLogger(__name__)


STAGE_ORDER = ("tokenizer", "pretrain", *EVAL_STAGES)
QUEUED_STATES = {"PENDING", "REQUEUED", "UNKNOWN", "READY", "PREEMPTED"}  # sacct, not yet running
LOG_EVERY_S = 60.0  # off a terminal: a log line when counts change, else at most this often


def clock(seconds: float) -> str:
    """12:34 or 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# A run's work in epochs of its stage, weighted by what an epoch costs relative to pre-training's:
# `make demo` at tiny measured 7.4 CPU-s per pre-training epoch, 14.7 per fine-tuning epoch (the
# whole encoder on every patch) and 0.2 per linear-probe epoch (one layer on cached features).
EPOCH_WEIGHT = {"pretrain": 1.0, "finetune": 2.0, "partial": 2.0, "scratch": 2.0, "linprobe": 0.03}


def work(spec: JobSpec | Worker) -> float:
    """Expected cost of one run, for ordering the local queue only (no unit)."""
    epochs = spec.config.get(spec.stage, {}).get("epochs", 1)
    total = sum(epochs) if isinstance(epochs, list) else epochs
    return EPOCH_WEIGHT.get(spec.stage, 1.0) * total


@dataclass
class Progress:
    """The launch's bookkeeping: which runs wait, run, finished or failed (by key), how often a
    job that died was started again, and how long the jobs of each stage take (for an ETA)."""

    specs: dict[str, JobSpec | Worker]
    waiting: list[str]
    running: dict[str, submitit.Job[Any]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    restarts: Counter[str] = field(default_factory=Counter)
    began: float = field(default_factory=time.monotonic)
    started: dict[str, float] = field(default_factory=dict)  # when each job was seen running
    took: dict[str, list[float]] = field(default_factory=dict)  # stage -> seconds per job

    def depends_on(self, key: str) -> str | None:
        dep = self.specs[key].depends_on
        return dep if dep in self.specs else None

    def ready(self) -> list[str]:
        """Waiting runs whose parent (an evaluation's pre-training, a pre-training's tokenizer)
        is done or not part of this launch, longest path to the end of the launch first:
        tokenizers, then pre-trainings, before any evaluation, since the rest waits on them.
        Starting evaluations first left the last pre-training running alone at the end, one slot
        busy and the others idle."""
        free = [k for k in self.waiting if (d := self.depends_on(k)) is None or d in self.done]
        return sorted(free, key=self.path_work, reverse=True)

    def path_work(self, key: str) -> float:
        """Estimated work from the start of `key` to the end of its last dependent: its own
        `work` plus that of its longest dependent path."""
        after = [self.path_work(k) for k in self.dependents.get(key, ())]
        return work(self.specs[key]) + max(after, default=0.0)

    @cached_property
    def dependents(self) -> dict[str, list[str]]:
        """Parent key -> the keys of the runs that wait on it in this launch."""
        out: dict[str, list[str]] = {}
        for key in self.specs:
            if (dep := self.depends_on(key)) is not None:
                out.setdefault(dep, []).append(key)
        return out

    def fail_dependents(self) -> list[submitit.Job[Any]]:
        """Runs whose parent failed fail too (transitively, as the loop is called again);
        returns the jobs of those already submitted (held by their dependency on Slurm) for the
        caller to cancel."""
        held = []
        for key in [*self.waiting, *self.running]:
            dep = self.depends_on(key)
            if dep in self.failed:
                parent = self.specs[dep]
                self.failed[key] = f"not run: its {stage_noun(parent.stage)} {parent.name} failed"
                if key in self.running:
                    held.append(self.running.pop(key))
                else:
                    self.waiting.remove(key)
        return held

    def start(self, key: str, job: submitit.Job[Any]) -> None:
        self.running[key] = job
        self.mark_running(key)

    def mark_running(self, key: str) -> None:
        self.started.setdefault(key, time.monotonic())

    def record(self, key: str, error: str | None, restart: bool = False) -> None:
        """A job ended: done, failed with `error`, or (`restart`) queued again at the front."""
        self.running.pop(key)
        began = self.started.pop(key, None)
        name = self.specs[key].name
        if restart:
            self.restarts[key] += 1
            self.waiting.insert(0, key)
            log.warning("%s: %s; starting it again (restart %d)", name, error, self.restarts[key])
        elif error is None:
            self.done.append(key)
            if began is not None:
                self.took.setdefault(self.specs[key].stage, []).append(time.monotonic() - began)
        else:
            self.failed[key] = error
            log.error("%s failed: %s", name, error)

    def fraction(self, key: str) -> float:
        """How far a running job is, from the last epoch it reported (0 before the first); a
        search worker reports its own share of the search, since its trials vary in length."""
        spec = self.specs[key]
        record = read_progress_record(spec.workdir)
        if "fraction" in record:
            return min(1.0, max(0.0, float(record["fraction"])))
        total = spec.config[spec.stage]["epochs"]
        total = sum(total) if isinstance(total, list) else total
        return min(1.0, int(record.get("epoch", 0)) / total)

    def remaining_s(self) -> float | None:
        """Seconds until every run has ended, from how long finished jobs of each stage took
        (or running ones project to take); None while a stage's cost is still unknown."""
        now = time.monotonic()
        cost = {stage: sum(times) / len(times) for stage, times in self.took.items()}
        fractions = {key: self.fraction(key) for key in self.running}
        for key, done in fractions.items():
            stage = self.specs[key].stage
            if stage not in cost and done > 0 and key in self.started:
                cost[stage] = (now - self.started[key]) / done
        stages = {self.specs[key].stage for key in [*self.waiting, *self.running]}
        if not stages <= set(cost):
            return None
        work = sum(cost[self.specs[key].stage] for key in self.waiting)
        work += sum(cost[self.specs[key].stage] * (1 - f) for key, f in fractions.items())
        return work / max(1, len(self.running))

    def overview(self) -> str:
        """`3/12 runs ended, 4:10 elapsed, about 9:40 left`."""
        ended = len(self.done) + len(self.failed)
        text = (
            f"{ended}/{len(self.specs)} runs ended, {clock(time.monotonic() - self.began)} elapsed"
        )
        left = self.remaining_s()
        return text + (f", about {clock(left)} left" if left is not None and self.running else "")

    def epochs(self) -> list[str]:
        """`name epoch/epochs` of every running job that has finished an epoch."""
        shown = []
        for key in self.running:
            spec = self.specs[key]
            record = read_progress_record(spec.workdir)
            if "epoch" not in record:
                continue
            total = record.get("epochs", spec.config[spec.stage]["epochs"])  # a trial's own
            total = ",".join(map(str, total)) if isinstance(total, list) else total  # partial
            trial = f" trial {record['trial']}" if "trial" in record else ""
            shown.append(f"{spec.name}{trial} {record['epoch']}/{total}")
        return shown

    def counts(self, state_of: Mapping[str, str] | None = None) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = {}
        for key, spec in self.specs.items():
            if key in self.failed:
                what = "failed"
            elif key in self.done:
                what = "done"
            elif key in self.running:
                queued = state_of is not None and state_of.get(key, "UNKNOWN") in QUEUED_STATES
                what = "queued" if queued else "running"
            else:
                what = "queued"
            counts.setdefault(spec.stage, Counter())[what] += 1
        return counts


class Summary:
    """Queued/running/done/failed per stage, and the epoch each running job has reached: redrawn
    in place on a TTY, otherwise a log line when the counts change or a minute has passed."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = ""
        self.last_counts = ""
        self.last_time = 0.0

    def show(
        self, counts: Mapping[str, Counter[str]], running: Sequence[str] = (), overview: str = ""
    ) -> None:
        counts_line = " | ".join(
            f"{stage}: {c['queued']} queued, {c['running']} running, {c['done']} done, "
            f"{c['failed']} failed"
            for stage, c in sorted(counts.items(), key=lambda kv: STAGE_ORDER.index(kv[0]))
        )
        line = (f"{overview} || " if overview else "") + counts_line
        line += f" || {', '.join(running)}" if running else ""
        now = time.monotonic()
        if line == self.last:
            return
        if not self.tty and counts_line == self.last_counts and now - self.last_time < LOG_EVERY_S:
            return
        self.last, self.last_counts, self.last_time = line, counts_line, now
        if self.tty:
            width = shutil.get_terminal_size((200, 24)).columns
            self.stream.write(f"\r\033[K{line[: max(20, width - 1)]}")
            self.stream.flush()
        else:
            log.info("%s", line)

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
