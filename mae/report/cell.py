"""One cell of a table: the runs of one (row, column), aggregated over seeds.

Its own module so that the claim verdicts (which read cells) and the query (which fills them and
judges the claims) do not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Seed = tuple[str, ...]  # what makes two runs different replicates: (pretrain.seed, <stage>.seed)


@dataclass(frozen=True)
class Cell:
    mean: float | None = None
    std: float | None = None  # sample std over seeds; None when n < 2
    n: int = 0
    run_ids: tuple[str, ...] = ()
    # One value per seed (the newest run of each): claims pair two cells by these keys.
    values: Mapping[Seed, float] = field(default_factory=dict)

    @property
    def missing(self) -> bool:
        return self.mean is None
