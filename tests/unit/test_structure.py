"""The house rules of `mae/`, checked on the source: small files and functions, and imports that
follow DESIGN.md's one-way data flow (a room imports only rooms below it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mae"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60

# Rooms from the bottom up; a room may import its own modules and any room on an earlier line.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mae.paths", "mae.schema", "mae.logger"),
    ("mae.overrides",),
    ("mae.config",),
    ("mae.model", "mae.data"),
    ("mae.train",),
    ("mae.evaluate",),
    ("mae.track",),
    ("mae.jobs",),
    ("mae.sweep", "mae.report"),
)
LEVEL = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def _room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports(path: Path) -> set[str]:
    """Every `mae.*` module the file imports (`from mae import track` counts as mae.track)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mae.")}
        elif isinstance(node, ast.ImportFrom) and node.module == "mae":
            found |= {f"mae.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mae."):
            found.add(node.module)
    return found


def test_every_room_has_a_layer() -> None:
    assert {_room(name) for name, _ in _modules() if name != "mae"} == set(LEVEL)


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    if module == "mae":
        return
    here = _room(module)
    upward = [
        target
        for target in sorted(_imports(path))
        if _room(target) != here and LEVEL[_room(target)] >= LEVEL[here]
    ]
    assert not upward, f"{module} imports {upward}, which are not below {here}"


def test_files_and_functions_stay_small() -> None:
    too_long = []
    for module, path in _modules():
        text = path.read_text()
        if (lines := text.count("\n")) > MAX_FILE_LINES:
            too_long.append(f"{module}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert not too_long, too_long


# Libraries that only some rooms may know (DESIGN.md): MLflow behind mae.track, Optuna in the
# sweep room (searches) and the job callables.
LIBRARY_ROOMS = {"mlflow": ("mae.track",), "optuna": ("mae.sweep", "mae.jobs")}


def _libraries(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & set(LIBRARY_ROOMS)


def test_libraries_stay_in_their_rooms() -> None:
    strays = [
        f"{module} imports {library}"
        for module, path in _modules()
        for library in sorted(_libraries(path))
        if _room(module) not in LIBRARY_ROOMS[library]
    ]
    assert not strays, strays
