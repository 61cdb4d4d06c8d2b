"""Where a search keeps its files, beside the MLflow store: the default Optuna storage
(`optuna.db`, or `optuna.journal`) and the best parameters (`searches/<scale>/<name>.yaml`), and
how another study reads them back through a reference such as `--set finetune=@search:<name>`.

"Beside the store" is the folder of a SQLite tracking file, else the project folder (an MLflow
server keeps its database elsewhere, but the best parameters must stay readable by planners).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from mae.config import EVAL_STAGES
from mae.paths import project_root, sqlite_path
from mae.schema import ConfigError, load_yaml

REFERENCE = "@search:"
OPTUNA_DB = "optuna.db"
OPTUNA_JOURNAL = "optuna.journal"


def beside_store(tracking_uri: str) -> Path:
    db = sqlite_path(tracking_uri)
    return db.resolve().parent if db is not None else project_root()


def best_params_path(tracking_uri: str, scale: str, name: str) -> Path:
    return beside_store(tracking_uri) / "searches" / scale / f"{name}.yaml"


def write_best_params(path: Path, record: dict[str, Any]) -> None:
    """Write the record atomically: a planner reading it never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    os.replace(tmp, path)


def is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REFERENCE)


def read_reference(
    section: str, value: str, scale: str, tracking_uri: str | None, source: str, where: str
) -> dict[str, Any]:
    """`<section>=@search:<name>` as `{<section>.<param>: value}`: the best parameters of that
    search at `scale` (values of its protocol's section, as the search ran them at that scale),
    read beside the store `tracking_uri` (None: the default store). A ConfigError when the
    section is not an evaluation or the search has not finished there."""
    from mae.track import resolve_tracking_uri  # MLflow only when a reference is used

    if section not in EVAL_STAGES:
        allowed = "a search reference sets an evaluation section, e.g. finetune=@search:<name>"
        raise ConfigError(source, where, value, allowed)
    name = value.removeprefix(REFERENCE)
    path = best_params_path(resolve_tracking_uri(tracking_uri), scale, name)
    if not name or not path.exists():
        raise ConfigError(
            source,
            where,
            value,
            f"no finished search {name!r} at scale {scale} ({path} is missing); run "
            f"`python studies/run.py {name or '<search>'} --scale {scale}` first",
        )
    record = load_yaml(path)
    params = record.get("params") if isinstance(record, dict) else None
    if not isinstance(params, dict):
        raise ConfigError(str(path), "params", params, "a mapping of the best parameters")
    return {f"{section}.{key}": param for key, param in params.items()}
