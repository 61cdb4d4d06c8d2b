"""MLflow's tables in a SQL store (SQLite, PostgreSQL, ...), read with SQLAlchemy alone.

Planning and the report read whole experiments, and for that MLflow costs more than the work:
search_runs materialises one ORM object per param, tag and metric (about 3 s for 1,000 runs of
130 params each), and importing MLflow at all takes about 4 s on a 2-core machine (its package
with genai and gateway modules, then its SQLAlchemy store), twice the time of planning a
1,000-run study. So these reads name MLflow's tables and columns directly (names unchanged since
MLflow 1.x) and never import it; every write still goes through MLflow's client.
`test_runs_frame_sql_path_equals_search_runs` compares the result with search_runs, which guards
against a schema change.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import column, table

if TYPE_CHECKING:
    import pandas as pd

EXPERIMENTS = table("experiments", column("experiment_id"), column("name"))
RUNS = table(
    "runs",
    *map(column, ("run_uuid", "name", "status", "start_time", "end_time")),
    *map(column, ("experiment_id", "lifecycle_stage")),
)
TAGS = table("tags", column("run_uuid"), column("key"), column("value"))
PARAMS = table("params", column("run_uuid"), column("key"), column("value"))
LATEST_METRICS = table(
    "latest_metrics", column("run_uuid"), column("key"), column("value"), column("is_nan")
)
RUN_COLUMNS = ("run_id", "run_name", "status", "start_time", "end_time")


def experiment_id(uri: str, name: str) -> str | None:
    """The id of the experiment called `name`, None when there is none or the database has no
    MLflow schema yet (reading never creates one, unlike opening MLflow's store)."""
    engine = sqlalchemy.create_engine(uri)
    try:
        if not sqlalchemy.inspect(engine).has_table("experiments"):
            return None
        with engine.connect() as connection:
            found = connection.execute(
                sqlalchemy.select(EXPERIMENTS.c.experiment_id).where(EXPERIMENTS.c.name == name)
            ).scalar()
    finally:
        engine.dispose()
    return None if found is None else str(found)


def keyed_runs(uri: str, experiment_id: str, keys: Collection[str]) -> list[dict[str, Any]]:
    """The experiment's active runs whose tag `content_key` is one of `keys`, each a dict of
    run_id, status, start_time (ms) and tags: what planning needs, in two SELECTs of plain rows
    (no DataFrame: pandas alone takes longer to import than the reads)."""
    key_tag = TAGS.alias("key_tag")
    keyed = (
        sqlalchemy.select(key_tag.c.run_uuid)
        .join(RUNS, RUNS.c.run_uuid == key_tag.c.run_uuid)
        .where(_active(experiment_id), key_tag.c.key == "content_key")
        .where(key_tag.c.value.in_(sorted(keys)))
    )
    engine = sqlalchemy.create_engine(uri)
    try:
        statuses = _fetch(
            engine,
            sqlalchemy.select(RUNS.c.run_uuid, RUNS.c.status, RUNS.c.start_time).where(
                RUNS.c.run_uuid.in_(keyed)
            ),
        )
        found = {
            run_id: {"run_id": run_id, "status": status, "start_time": int(start or 0), "tags": {}}
            for run_id, status, start in statuses
        }
        tags = sqlalchemy.select(TAGS.c.run_uuid, TAGS.c.key, TAGS.c.value)
        for run_id, key, value in _fetch(engine, tags.where(TAGS.c.run_uuid.in_(keyed))):
            found[run_id]["tags"][key] = value
    finally:
        engine.dispose()
    return list(found.values())


def runs(uri: str, experiment_id: str) -> pd.DataFrame:
    """The experiment's active runs as search_runs gives them, in four SELECTs: run_id, run_name,
    status, start_time, end_time (ms) and `tags.*`, `params.*`, `metrics.*` (latest values)."""
    active = _active(experiment_id)
    run_columns = (RUNS.c.run_uuid, RUNS.c.name, RUNS.c.status, RUNS.c.start_time, RUNS.c.end_time)
    engine = sqlalchemy.create_engine(uri)
    try:
        frame = _read(engine, sqlalchemy.select(*run_columns).where(active))
        frame.columns = list(RUN_COLUMNS)
        frame = frame.set_index("run_id")
        for prefix, model in (("tags.", TAGS), ("params.", PARAMS), ("metrics.", LATEST_METRICS)):
            extra = (model.c.is_nan,) if model is LATEST_METRICS else ()
            rows = _read(
                engine,
                sqlalchemy.select(model.c.run_uuid, model.c.key, model.c.value, *extra)
                .join(RUNS, RUNS.c.run_uuid == model.c.run_uuid)
                .where(active),
            )
            if extra:  # MLflow stores NaN as is_nan with a placeholder value
                rows["value"] = rows["value"].astype(float).mask(rows["is_nan"].astype(bool))
            frame = frame.join(_wide(rows, prefix))
    finally:
        engine.dispose()
    return frame.sort_values("start_time", ascending=False).reset_index()


def _active(experiment_id: str) -> sqlalchemy.ColumnElement[bool]:
    return (RUNS.c.experiment_id == int(experiment_id)) & (RUNS.c.lifecycle_stage == "active")


def _fetch(engine: sqlalchemy.Engine, statement: sqlalchemy.Select) -> list[tuple]:
    """Rows of a SELECT through the bare DB-API cursor (SQLAlchemy's Row objects cost more than
    the query). Its bound values (the experiment id, constants, content keys) are inlined as
    escaped literals, so a study of any size is one statement, whatever the driver's limit on
    parameters."""
    sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        connection.close()


def _read(engine: sqlalchemy.Engine, statement: sqlalchemy.Select) -> pd.DataFrame:
    import pandas as pd

    names = [selected.name for selected in statement.selected_columns]
    return pd.DataFrame(_fetch(engine, statement), columns=names)


def _wide(rows: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """(run_uuid, key, value) rows -> one column per key."""
    wide = rows.pivot(index="run_uuid", columns="key", values="value").add_prefix(prefix)
    wide.columns.name = None
    return wide
