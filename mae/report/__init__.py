"""Tables and figures of the paper, rebuilt by querying tracked runs (`build_tables`), with the
paper's claims about each decided from the runs over seeds."""

from mae.report.cell import Cell
from mae.report.claims import CLAIMS, Claim
from mae.report.definitions import DEFINITION_IDS, DEFINITIONS, Definition
from mae.report.query import TableResult, build_tables, tables_from_frame
from mae.report.verdicts import Verdict

__all__ = [
    "CLAIMS",
    "DEFINITIONS",
    "DEFINITION_IDS",
    "Cell",
    "Claim",
    "Definition",
    "TableResult",
    "Verdict",
    "build_tables",
    "tables_from_frame",
]
