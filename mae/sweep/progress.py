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
from typing import Any, TextIO

import submitit

from mae.config import EVAL_STAGES
from mae.jobs import JobSpec, read_progress
from mae.sweep.plan import stage_noun

log = logging.getLogger(__name__)


STAGE_ORDER = ("tokenizer", "pretrain", *EVAL_STAGES)
READY_ORDER = {"tokenizer": 0, "pretrain": 2}  # others (evaluations) 1: results arrive early
QUEUED_STATES = {"PENDING", "REQUEUED", "UNKNOWN", "READY", "PREEMPTED"}  # sacct, not yet running


@dataclass
class Progress:
    """The launch's bookkeeping: which runs wait, run, finished or failed (by key)."""

    specs: dict[str, JobSpec]
    waiting: list[str]
    running: dict[str, submitit.Job[Any]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def depends_on(self, key: str) -> str | None:
        dep = self.specs[key].depends_on
        return dep if dep in self.specs else None

    def ready(self) -> list[str]:
        """Waiting runs whose parent (an evaluation's pre-training, a pre-training's tokenizer)
        is done or not part of this launch: tokenizers first, since pre-trainings wait for
        them, then evaluations so that results arrive early."""
        free = [k for k in self.waiting if (d := self.depends_on(k)) is None or d in self.done]
        return sorted(free, key=lambda k: READY_ORDER.get(self.specs[k].stage, 1))

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

    def record(self, key: str, error: str | None) -> None:
        self.running.pop(key)
        if error is None:
            self.done.append(key)
        else:
            self.failed[key] = error
            log.error("%s failed: %s", self.specs[key].name, error)

    def epochs(self) -> list[str]:
        """`name epoch/epochs` of every running job that has finished an epoch."""
        shown = []
        for key in self.running:
            spec = self.specs[key]
            epoch = read_progress(spec.workdir)
            if epoch is not None:
                shown.append(f"{spec.name} {epoch}/{spec.config[spec.stage]['epochs']}")
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

    def __init__(self, stream: TextIO | None = None, every_s: float = 60.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.last = ""
        self.last_counts = ""
        self.last_time = 0.0

    def show(self, counts: Mapping[str, Counter[str]], running: Sequence[str] = ()) -> None:
        counts_line = " | ".join(
            f"{stage}: {c['queued']} queued, {c['running']} running, {c['done']} done, "
            f"{c['failed']} failed"
            for stage, c in sorted(counts.items(), key=lambda kv: STAGE_ORDER.index(kv[0]))
        )
        line = counts_line + (f" || {', '.join(running)}" if running else "")
        now = time.monotonic()
        if line == self.last:
            return
        if not self.tty and counts_line == self.last_counts and now - self.last_time < self.every_s:
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
