"""How the text renderers spell symbols: Markdown keeps Unicode, LaTeX gets escapes and math."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

MISSING = "—"

_TEX = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
    # Text-mode < and > print as ¡ and ¿ in LaTeX's default font encoding.
    "<": "$<$",
    ">": "$>$",
    # Unicode the claims and headers use, as math a plain LaTeX preamble sets.
    "−": "$-$",
    "★": r"$\star$",
    "±": r"$\pm$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≫": r"$\gg$",
    "≈": r"$\approx$",
    "→": r"$\to$",
    "∼": r"$\sim$",
    "“": "``",
    "”": "''",
    "—": "---",
    "–": "--",
}


def tex_escape(text: str) -> str:
    escaped = "".join(_TEX.get(ch, ch) for ch in text)
    return re.sub(r"`([^`]+)`", r"\\texttt{\1}", escaped)


@dataclass(frozen=True)
class Style:
    missing: str
    star: str
    approx: str
    pm: str
    times: str
    delta: str
    escape: Callable[[str], str]


MARKDOWN = Style(
    missing=MISSING, star="★", approx="~", pm="±", times="×", delta="Δ", escape=lambda s: s
)
LATEX = Style(
    missing="---",
    star=r"$\star$",
    approx=r"$\sim$",
    pm=r"$\pm$",
    times=r"$\times$",
    delta=r"$\Delta$",
    escape=tex_escape,
)
