"""Decide each claim from the runs: the difference of the two cells over seeds, its 95% interval,
and where that interval lies against the claim's region (`Claim.region`):

- holds: the interval lies inside the region (for ≥: no drop larger than the margin fits it);
- contradicted: the interval lies wholly outside it;
- inconclusive: it straddles a boundary; the verdict says how many seeds per row would decide;
- missing: a cell has no finished run, or fewer than two seeds (no interval).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from mae.report.cell import Cell
from mae.report.claims import Claim, Ref
from mae.report.paper import PaperValue
from mae.report.stats import Interval, compare, seeds_to_decide

Outcome = Literal["holds", "contradicted", "inconclusive", "missing"]
OUTCOMES: tuple[Outcome, ...] = ("holds", "contradicted", "inconclusive", "missing")


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    outcome: Outcome
    estimate: float | None = None  # ours: mean(left) − mean(right), even from one seed each
    interval: Interval | None = None
    paper: PaperValue | None = None  # the paper's difference (approximate if either value is)
    seeds_needed: int | None = None  # inconclusive: seeds per row that would decide (estimate)
    why: str = ""  # missing: which side lacks runs or seeds

    @property
    def label(self) -> str:
        if self.outcome == "inconclusive" and self.interval is not None:
            return f"inconclusive ({n_label(self.interval)})"
        if self.outcome == "missing":
            return f"missing ({self.why})"
        return self.outcome


def n_label(interval: Interval) -> str:
    left, right = interval.n
    return f"n={left}" if left == right else f"n={left}/{right}"


def decide(claim: Claim, interval: Interval) -> Outcome:
    low, high = claim.region
    if low < interval.low and interval.high < high:
        return "holds"
    if interval.high < low or interval.low > high:
        return "contradicted"
    return "inconclusive"


def _distance(claim: Claim, estimate: float) -> float:
    """From the observed difference to the nearest finite boundary of the claim's region."""
    return min(abs(estimate - edge) for edge in claim.region if math.isfinite(edge))


def _why_missing(claim: Claim, left: Cell, right: Cell) -> str:
    sides = ((claim.left, left), (claim.right, right))
    empty = [ref.name for ref, cell in sides if cell.missing]
    if empty:
        return "no run: " + ", ".join(empty)
    return "n=1: " + ", ".join(ref.name for ref, cell in sides if len(cell.values) < 2)


def judge(claim: Claim, left: Cell, right: Cell, paper: PaperValue | None = None) -> Verdict:
    """The verdict on one claim from its two cells (and the paper's difference, to show)."""
    estimate = None if left.missing or right.missing else left.mean - right.mean
    interval = compare(left, right)
    if interval is None:
        why = _why_missing(claim, left, right)
        return Verdict(claim, "missing", estimate, None, paper, why=why)
    outcome = decide(claim, interval)
    needed = None
    if outcome == "inconclusive":
        needed = seeds_to_decide(interval, _distance(claim, interval.estimate))
    return Verdict(claim, outcome, interval.estimate, interval, paper, needed)


def judge_all(
    claims: Iterable[Claim],
    cell: Callable[[Ref], Cell],
    paper: Callable[[Ref], PaperValue | None],
) -> tuple[Verdict, ...]:
    """Verdicts on `claims`, reading each cell and the paper's value through the callables."""
    out = []
    for claim in claims:
        left, right = paper(claim.left), paper(claim.right)
        diff = None
        if left is not None and right is not None:
            diff = PaperValue(left.value - right.value, left.confirmed and right.confirmed)
        out.append(judge(claim, cell(claim.left), cell(claim.right), diff))
    return tuple(out)


def counts(verdicts: Iterable[Verdict]) -> Counter[str]:
    return Counter(v.outcome for v in verdicts)


def summary(name: str, verdicts: Iterable[Verdict]) -> str:
    """E.g. "Fig. 5: 3 of 5 claims hold, 2 inconclusive"."""
    tally = counts(verdicts)
    total = sum(tally.values())
    if not total:
        return f"{name}: no claims"
    rest = [f"{tally[o]} {o}" for o in OUTCOMES[1:] if tally[o]]
    claims = "claim holds" if total == 1 else "claims hold"
    return f"{name}: {tally['holds']} of {total} {claims}" + "".join(f", {r}" for r in rest)
