"""Bulk statements handed straight to the driver's `executemany`.

SQLAlchemy processes every parameter of every row in Python (type processors,
parameter dictionaries); on the hot bulk writes of a pass (10,000 job updates,
their attempt rows and audit rows) that was more than half of the time. Here the
statement is compiled once for the dialect and the rows are converted once, by
type, to what the driver takes; the result is the same rows in the same format
as the ORM path writes (the tests read them back through the models).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import Session


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes aware times")
        # The storage format of controller.store.models.UTCDateTime on SQLite.
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _postgres_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes aware times")
        return value
    if isinstance(value, dict | list):
        from psycopg.types.json import Json

        return Json(value)
    return value


def executemany(session: Session, statement: ClauseElement, rows: Sequence[dict[str, Any]]) -> int:
    """Run `statement` once per row (bind names as keys) in the session's transaction.

    Returns the total number of rows the driver reports as affected.
    """
    if not rows:
        return 0
    connection = session.connection()
    dialect = connection.dialect
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    convert = _sqlite_value if dialect.name == "sqlite" else _postgres_value
    params: list[Any]
    if compiled.positional:
        order = compiled.positiontup or []
        params = [tuple(convert(row[name]) for name in order) for row in rows]
    else:
        params = [{name: convert(value) for name, value in row.items()} for row in rows]
    result = connection.exec_driver_sql(str(compiled), params)
    return int(result.rowcount)


def insert_many(session: Session, table: sa.Table, rows: Sequence[dict[str, Any]]) -> int:
    """INSERT rows that all have the same keys (column names)."""
    if not rows:
        return 0
    statement = sa.insert(table).values({c: sa.bindparam(c) for c in rows[0]})
    return executemany(session, statement, rows)
