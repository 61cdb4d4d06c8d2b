"""Intervals over seeds: the 95% t-interval of a cell's mean (error bars) and of the difference
of two cells' means (claims), and an estimate of how many seeds would decide a claim.

The difference is paired on per-seed differences when both cells hold the same seeds (the two
rows then share what a seed fixes: data order, initialisation, masks), Welch's otherwise. The t
quantile is `scipy.special.stdtrit`, the very function `scipy.stats.t.ppf` evaluates: importing
`scipy.stats` costs every report about a second, `scipy.special` a tenth of that.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special

from mae.report.cell import Cell

LEVEL = 0.95
MAX_SEEDS = 1000  # the seeds estimate gives up beyond this

Test = Literal["paired", "Welch"]


def t_quantile(df: float | np.ndarray, level: float = LEVEL) -> float | np.ndarray:
    """The two-sided `level` quantile of Student's t with `df` degrees of freedom."""
    return special.stdtrit(df, 0.5 + level / 2)


@dataclass(frozen=True)
class Interval:
    """mean(left) − mean(right), its interval and test, and the spreads the seeds estimate uses."""

    estimate: float
    low: float
    high: float
    test: Test
    n: tuple[int, int]  # seeds of each side (paired: the number of pairs on both)
    sds: tuple[float, ...]  # paired: sd of the per-seed differences; Welch: each side's sd


def mean_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The t-interval of the mean of `values`; None below two values."""
    if len(values) < 2:
        return None
    mean, half = statistics.fmean(values), _half_paired(statistics.stdev(values), len(values))
    return mean - half, mean + half


def _half_paired(sd: float, n: int | np.ndarray) -> float | np.ndarray:
    return t_quantile(n - 1) * sd / np.sqrt(n)


def _welch_terms(s1: float, n1, s2: float, n2) -> tuple:
    """Standard error and Welch–Satterthwaite degrees of freedom."""
    v1, v2 = s1**2 / n1, s2**2 / n2
    se = np.sqrt(v1 + v2)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    return se, np.where(np.isfinite(df), df, np.asarray(n1) + n2 - 2)


def paired(left: Sequence[float], right: Sequence[float]) -> Interval:
    """Paired t-interval; `left[i]` and `right[i]` are the same seed."""
    diffs = [a - b for a, b in zip(left, right, strict=True)]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = float(_half_paired(sd, len(diffs)))
    return Interval(mean, mean - half, mean + half, "paired", (len(diffs), len(diffs)), (sd,))


def welch(left: Sequence[float], right: Sequence[float]) -> Interval:
    """Welch's t-interval for unequal variances."""
    s1, s2 = statistics.stdev(left), statistics.stdev(right)
    se, df = _welch_terms(s1, len(left), s2, len(right))
    mean = statistics.fmean(left) - statistics.fmean(right)
    half = float(t_quantile(df) * se)
    return Interval(mean, mean - half, mean + half, "Welch", (len(left), len(right)), (s1, s2))


def compare(left: Cell, right: Cell) -> Interval | None:
    """The difference of two cells over seeds; None when a side has fewer than two seeds."""
    if len(left.values) >= 2 and set(left.values) == set(right.values):
        seeds = sorted(left.values)
        return paired([left.values[s] for s in seeds], [right.values[s] for s in seeds])
    if len(left.values) >= 2 and len(right.values) >= 2:
        return welch(list(left.values.values()), list(right.values.values()))
    return None


def seeds_to_decide(interval: Interval, distance: float) -> int | None:
    """Seeds per row at which the interval's half-width would fall below `distance` (from the
    observed difference to the claim's nearest boundary), were the effect and the spread to stay
    as observed. An estimate; None when no number up to MAX_SEEDS would do."""
    if distance <= 0 or not math.isfinite(distance):
        return None
    ns = np.arange(2, MAX_SEEDS + 1)
    if interval.test == "paired":
        half = _half_paired(interval.sds[0], ns)
    else:
        se, df = _welch_terms(interval.sds[0], ns, interval.sds[1], ns)
        half = t_quantile(df) * se
    enough = np.flatnonzero(half < distance)
    if not len(enough):
        return None
    return max(int(ns[enough[0]]), min(interval.n) + 1)
