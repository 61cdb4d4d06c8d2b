"""The paper's claims about each table and figure, as data: comparisons between two cells, with
the paper's words (shared/paper_reference.md) beside each. `mae.report.verdicts` decides them.

A claim reads "left <relation> right" on the difference d = mean(left) − mean(right), in the
column's unit (accuracy points, seconds); `margin` is in that unit too:
    >   d > 0                   (the paper: "better", "improves")
    <   d < 0                   (faster: less wall-clock time)
    ≥   d > −margin             (not worse by more than the margin: "works well", "can be narrower")
    ≫   d > margin              (better by at least the margin: "boosts significantly")
    ≈   −margin < d < margin    (as good as)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Relation = Literal[">", "<", "≥", "≫", "≈"]

NOT_WORSE = 0.5  # points: a drop the paper's Table 1 treats as a tie (its rows within 0.5 "work")
CLOSE = 1.0  # points: "come close", "a wide range ... work well"
MUCH = 2.0  # points: "significantly", "much better"


@dataclass(frozen=True)
class Ref:
    """One cell: a row label and a column name of the claim's table (or of `table`)."""

    row: str
    column: str
    name: str  # how the claim reads it, e.g. "lin(75%)"
    table: str | None = None  # a cell of another definition (the from-scratch baseline)


@dataclass(frozen=True)
class Claim:
    left: Ref
    relation: Relation
    right: Ref
    words: str  # the paper's words: “quoted”, or the table's numbers where the text says nothing
    margin: float = 0.0

    @property
    def region(self) -> tuple[float, float]:
        """The differences left − right that make the claim true (open bounds)."""
        m, inf = self.margin, float("inf")
        return {
            ">": (0.0, inf),
            "<": (-inf, 0.0),
            "≥": (-m, inf),
            "≫": (m, inf),
            "≈": (-m, m),
        }[self.relation]

    @property
    def text(self) -> str:
        qualifier = {"≥": f" (within {self.margin:g})", "≫": f" (by ≥ {self.margin:g})"}
        qualifier["≈"] = f" (within ±{self.margin:g})"
        return f"{self.left.name} {self.relation} {self.right.name}" + qualifier.get(
            self.relation, ""
        )


def _pair(column: str, rows: Mapping[str, str]) -> dict[str, Ref]:
    """Refs of one column by row label, named `<column>(<shown>)`."""
    return {row: Ref(row, column, f"{column}({shown})") for row, shown in rows.items()}


def _ft_lin(rows: Mapping[str, str]) -> tuple[dict[str, Ref], dict[str, Ref]]:
    return _pair("ft", rows), _pair("lin", rows)


_A_FT, _A_LIN = _ft_lin({"1": "1 block", "8": "8 blocks"})
_B_FT, _B_LIN = _ft_lin({"512": "512-d", "1024": "1024-d"})
_C_FT, _C_LIN = _ft_lin({"encoder w/ [M]": "w/ [M]", "encoder w/o [M]": "w/o [M]"})
_D_FT = _pair("ft", {"pixel (w/ norm)": "norm pixel", "pixel (w/o norm)": "pixel"})
_E_FT, _E_LIN = _ft_lin({"none": "none", "crop, rand size": "crop, rand size"})
_F_FT, _F_LIN = _ft_lin({"random (75)": "random", "block (75)": "block 75%", "grid (75)": "grid"})
_FIG5_FT, _FIG5_LIN = _ft_lin({r: f"{r}%" for r in ("10", "30", "50", "75", "90")})
_FIG7_LIN = _pair("lin", {"800": "800 ep", "1600": "1600 ep"})
_FIG9 = {"0": Ref("0", "partial", "lin (0 blocks)")} | _pair(
    "partial", {"0.5": "MLP of last block", "1": "1 block", "6": "6 blocks", "24": "24 blocks"}
)
_T2 = _pair("time", {r: r for r in ("w/ [M], 8", "w/o [M], 8", "w/o [M], 1")})
SCRATCH = Ref("ViT", "scratch", "scratch", table="scratch")

_NO_MASK_TOKEN = "“An encoder without mask tokens is more accurate and faster.”"
_RANDOM_BEST = "“Random sampling works the best.”"
_NARROW = "“The decoder can be narrower than the encoder (1024-d).”"
_BEATS_SCRATCH = (
    "“All fine-tuning results in Figure 5 are better than training from scratch (82.5%).”"
)

CLAIMS: dict[str, tuple[Claim, ...]] = {
    "table1a": (
        Claim(
            _A_LIN["8"], ">", _A_LIN["1"], "“A deep decoder can improve linear probing accuracy.”"
        ),
        Claim(
            _A_FT["1"],
            "≥",
            _A_FT["8"],
            "a single-block decoder still reaches 84.8 fine-tuned (text)",
            NOT_WORSE,
        ),
    ),
    "table1b": (
        Claim(_B_LIN["512"], "≥", _B_LIN["1024"], _NARROW, NOT_WORSE),
        Claim(_B_FT["512"], "≥", _B_FT["1024"], _NARROW, NOT_WORSE),
    ),
    "table1c": (
        Claim(
            _C_LIN["encoder w/o [M]"],
            ">",
            _C_LIN["encoder w/ [M]"],
            "mask tokens in the encoder cost “14% in linear probing”",
        ),
        Claim(_C_FT["encoder w/o [M]"], ">", _C_FT["encoder w/ [M]"], _NO_MASK_TOKEN),
    ),
    "table1d": (
        Claim(
            _D_FT["pixel (w/ norm)"],
            "≥",
            _D_FT["pixel (w/o norm)"],
            "“Pixels as reconstruction targets are effective.” (norm pixel 85.4 vs. 84.9 ft)",
            NOT_WORSE,
        ),
    ),
    "table1e": (
        Claim(
            _E_LIN["crop, rand size"],
            ">",
            _E_LIN["none"],
            "Table 1e: crop, rand size 73.5 vs. none 65.7 lin",
        ),
        Claim(
            _E_FT["none"],
            "≥",
            _E_FT["crop, rand size"],
            "“Our MAE works with minimal or no augmentation.”",
            CLOSE,
        ),
    ),
    "table1f": tuple(
        Claim(refs["random (75)"], ">", refs[other], _RANDOM_BEST)
        for refs in (_F_LIN, _F_FT)
        for other in ("block (75)", "grid (75)")
    ),
    "fig5": (
        Claim(
            _FIG5_LIN["75"],
            ">",
            _FIG5_LIN["30"],
            "lin “increases steadily with the masking ratio until the sweet point”",
        ),
        Claim(
            _FIG5_LIN["75"],
            ">",
            _FIG5_LIN["90"],
            "“The ratio of 75% is good for both linear probing and fine-tuning.”",
        ),
        Claim(
            _FIG5_LIN["75"],
            ">",
            _FIG5_LIN["10"],
            "“the accuracy gap is up to ∼20% (54.6% vs. 73.5%)”",
        ),
        Claim(
            _FIG5_FT["50"],
            "≥",
            _FIG5_FT["75"],
            "ft: “a wide range of masking ratios (40–80%) work well”",
            CLOSE,
        ),
        Claim(_FIG5_FT["75"], ">", SCRATCH, _BEATS_SCRATCH),
    ),
    "fig7": (
        Claim(
            _FIG7_LIN["1600"],
            ">",
            _FIG7_LIN["800"],
            "“we have not observed saturation of linear probing accuracy even at 1600 epochs”",
        ),
    ),
    "fig9": (
        Claim(_FIG9["1"], "≫", _FIG9["0"], "tuning one block lifts 73.5 → 81.0 (text)", MUCH),
        Claim(
            _FIG9["0.5"],
            "≫",
            _FIG9["0"],
            "tuning the last block's MLP gives 79.1, “essentially fine-tuning an MLP head”",
            MUCH,
        ),
        Claim(
            _FIG9["6"], "≥", _FIG9["24"], "“4 or 6 blocks” come close to full fine-tuning", CLOSE
        ),
    ),
    "table2": (
        Claim(_T2["w/o [M], 8"], "<", _T2["w/ [M], 8"], _NO_MASK_TOKEN),
        Claim(
            _T2["w/o [M], 1"],
            "<",
            _T2["w/o [M], 8"],
            "speed-up 2.8×, and 3.5–4.1× with a 1-block decoder, ViT-H, or both (text)",
        ),
    ),
    "scratch": (Claim(Ref("ViT", "MAE ft", "MAE ft"), ">", SCRATCH, _BEATS_SCRATCH),),
}


def claims_of(definition_id: str) -> tuple[Claim, ...]:
    return CLAIMS.get(definition_id, ())
