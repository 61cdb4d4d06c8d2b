"""Tables and figures of the paper, rebuilt by querying tracked runs (`build_tables`)."""

from mae.report.definitions import DEFINITION_IDS, DEFINITIONS, Definition
from mae.report.query import Cell, TableResult, build_tables, tables_from_frame

__all__ = [
    "DEFINITIONS",
    "DEFINITION_IDS",
    "Cell",
    "Definition",
    "TableResult",
    "build_tables",
    "tables_from_frame",
]
