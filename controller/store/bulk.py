"""Bulk statements handed straight to the driver.

SQLAlchemy processes every parameter of every row in Python (type processors,
parameter dictionaries); on the hot bulk writes of a pass (10,000 job updates,
their attempt rows and audit rows) that was more than half of the time. Here a
statement is compiled once per dialect and shape (and cached), and the rows are
converted once, by type, to what the driver takes; repeated times (a pass writes
`now` into every row) are converted once per batch. On SQLite a batch is one
`executemany`; on PostgreSQL it is one statement over arrays (see `update_rows`).
The result is the same rows in the same format as the ORM path writes (the tests
read them back through the models).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import Session

from controller.store.prepared import connection_of

# Values every driver takes as they are: no conversion, not even a function call's worth.
_AS_IS: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store only takes aware times")
    return value


def _sqlite_time(value: datetime) -> str:
    # The storage format of controller.store.models.UTCDateTime on SQLite.
    return _aware(value).astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


# json.dumps's output (the JSON type's on SQLite) without its check for circular
# references, which costs as much as the encoding of a small audit row: values written
# here are plain data (decoded JSON, or built by the store), never self-referencing.
_encode_json = json.JSONEncoder(check_circular=False).encode


def _sqlite_json(value: dict[str, Any] | list[Any]) -> str:
    if not value:  # most of a job's labels, selector and exit codes: no encoder call
        return "{}" if isinstance(value, dict) else "[]"
    return _encode_json(value)


def _postgres_json(value: Any) -> Any:
    from psycopg.types.json import Json

    return Json(value)


class Converter:
    """Turns Python values into what the dialect's driver takes.

    Times are converted once per distinct value (a pass writes `now` into every row):
    the converter remembers them, so make a new one per batch.
    """

    def __init__(self, dialect_name: str) -> None:
        self._to_time: Callable[[datetime], Any] = _sqlite_time if dialect_name == "sqlite" else _aware
        self._to_json = _sqlite_json if dialect_name == "sqlite" else _postgres_json
        self._times: dict[datetime, Any] = {}
        self.json_is_text = dialect_name == "sqlite"
        """JSON values go to the driver as `json.dumps` text (SQLite), not as objects."""

    def value(self, value: Any) -> Any:
        """One value."""
        if type(value) in _AS_IS:
            return value
        if isinstance(value, datetime):
            done = self._times.get(value)
            if done is None:
                done = self._times[value] = self._to_time(value)
            return done
        if isinstance(value, dict | list):
            return self._to_json(value)
        return value

    def row(self, values: Iterable[Any]) -> tuple[Any, ...]:
        """Several values; the plain ones (most) without a call each."""
        one = self.value
        return tuple([v if type(v) in _AS_IS else one(v) for v in values])


def converter(session: Session) -> Converter:
    """A new converter for the session's dialect."""
    return Converter(connection_of(session).dialect.name)


@dataclass(frozen=True, slots=True)
class BulkStatement:
    """A statement compiled for one dialect, and where each row's values go in it."""

    sql: str
    names: tuple[str, ...]
    """Bind names in the order the caller's rows carry the values."""
    order: tuple[int, ...] | None
    """Positional dialects: the row index of each placeholder's value. None: named binds."""


_PREPARED: dict[tuple[str, Hashable], BulkStatement] = {}


def _compile(dialect: sa.Dialect, statement: ClauseElement, names: Sequence[str]) -> BulkStatement:
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    if not compiled.positional:
        return BulkStatement(str(compiled), tuple(names), None)
    index = {name: i for i, name in enumerate(names)}
    return BulkStatement(str(compiled), tuple(names), tuple(index[n] for n in compiled.positiontup or []))


def prepare(
    session: Session, key: Hashable, build: Callable[[], ClauseElement], names: Sequence[str]
) -> BulkStatement:
    """The statement `build()` compiled for the session's dialect, cached under `key`.

    `key` must name the statement's shape entirely: the same key always builds the
    same statement with the same bind `names`.
    """
    dialect = connection_of(session).dialect
    cache_key = (dialect.name, key)
    prepared = _PREPARED.get(cache_key)
    if prepared is None:
        prepared = _PREPARED[cache_key] = _compile(dialect, build(), names)
    return prepared


def run_prepared(session: Session, prepared: BulkStatement, rows: Sequence[Sequence[Any]]) -> int:
    """Run a prepared statement once per row of driver values (laid out as `prepared.names`).

    Returns the total number of rows the driver reports as affected.
    """
    if not rows:
        return 0
    params: Sequence[Any]
    order = prepared.order
    if order is None:
        names = prepared.names
        params = [dict(zip(names, row, strict=True)) for row in rows]
    elif order == tuple(range(len(order))):
        params = rows
    elif len(order) == 1:
        params = [(row[order[0]],) for row in rows]
    else:
        pick = itemgetter(*order)
        params = [pick(row) for row in rows]
    return _on_cursor(session, prepared.sql, params)


def _on_cursor(session: Session, sql: str, params: Sequence[Any]) -> int:
    """Run `sql` once per parameter set on the DBAPI cursor of the session's transaction.

    Not through `Connection.exec_driver_sql`, whose bookkeeping cost more than the
    statement on the one-row writes of the request paths. Returns the rows affected.
    """
    cursor = connection_of(session).connection.cursor()
    try:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)
        return int(cursor.rowcount)
    finally:
        cursor.close()


# --- whole tables of rows -------------------------------------------------------------------------
#
# SQLite runs in the process: `executemany` of one compiled statement is as cheap as a
# statement gets there. A PostgreSQL driver pays its own per-statement work for every
# row of an `executemany` (about as much as the server's), so there a batch is one
# statement over arrays, one per column: `unnest(%(a)s::T[], ...)`.


def _unnest(dialect: sa.Dialect, table: sa.Table, names: Sequence[str], columns: Sequence[str]) -> str:
    """`unnest(%(name)s::type[], ...) AS v(name, ...)` for each column's type."""
    arrays = ", ".join(
        f"%({n})s::{table.c[c].type.compile(dialect=dialect)}[]" for n, c in zip(names, columns, strict=True)
    )
    return f"unnest({arrays}) AS v({', '.join(names)})"


def _arrays(session: Session, statement: BulkStatement, rows: Sequence[Sequence[Any]]) -> int:
    columns = zip(*rows, strict=True)
    params = {name: list(values) for name, values in zip(statement.names, columns, strict=True)}
    return _on_cursor(session, statement.sql, [params])


def _quoted(dialect: sa.Dialect, name: str) -> str:
    return dialect.identifier_preparer.quote(name)


def update_rows(
    session: Session,
    table: sa.Table,
    where: tuple[str, ...],
    columns: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
) -> int:
    """`UPDATE table SET columns WHERE the where-columns match`, once per row.

    Each row carries driver values (see `Converter`): the new values in `columns`
    order, then the values the `where` columns must have. Returns how many rows the
    database changed in all.
    """
    if not rows:
        return 0
    dialect = connection_of(session).dialect
    names = (*(f"v_{c}" for c in columns), *(f"w_{w}" for w in where))
    # One statement over arrays changes a row once even if two entries name it (same first
    # where-value), where one statement per entry could change it twice: such batches keep
    # one statement per row.
    first = len(columns)
    distinct = len({row[first] for row in rows}) == len(rows)
    if dialect.name == "postgresql" and len(rows) > 1 and distinct:
        key = ("update-arrays", table.name, where, columns)
        statement = _PREPARED.get((dialect.name, key))
        if statement is None:
            name = _quoted(dialect, table.name)
            sets = ", ".join(f"{_quoted(dialect, c)} = v.v_{c}" for c in columns)
            matches = " AND ".join(f"{name}.{_quoted(dialect, w)} = v.w_{w}" for w in where)
            source = _unnest(dialect, table, names, (*columns, *where))
            statement = BulkStatement(f"UPDATE {name} SET {sets} FROM {source} WHERE {matches}", names, None)
            _PREPARED[(dialect.name, key)] = statement
        return _arrays(session, statement, rows)

    def build() -> ClauseElement:
        return (
            sa.update(table)
            .where(*(table.c[w] == sa.bindparam(f"w_{w}") for w in where))
            .values({c: sa.bindparam(f"v_{c}") for c in columns})
        )

    return run_prepared(session, prepare(session, ("update", table.name, where, columns), build, names), rows)


def insert_rows(
    session: Session, table: sa.Table, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> int:
    """INSERT rows given as driver values in `columns` order (see `Converter`)."""
    if not rows:
        return 0
    dialect = connection_of(session).dialect
    if dialect.name == "postgresql" and len(rows) > 1:
        key = ("insert-arrays", table.name, columns)
        statement = _PREPARED.get((dialect.name, key))
        if statement is None:
            names = tuple(f"c_{c}" for c in columns)
            targets = ", ".join(_quoted(dialect, c) for c in columns)
            statement = BulkStatement(
                f"INSERT INTO {_quoted(dialect, table.name)} ({targets}) "
                f"SELECT * FROM {_unnest(dialect, table, names, columns)}",
                names, None,
            )
            _PREPARED[(dialect.name, key)] = statement
        return _arrays(session, statement, rows)
    statement = prepare(
        session,
        ("insert", table.name, columns),
        lambda: sa.insert(table).values({c: sa.bindparam(c) for c in columns}),
        columns,
    )
    return run_prepared(session, statement, rows)


def insert_many(session: Session, table: sa.Table, rows: Sequence[dict[str, Any]]) -> int:
    """INSERT rows that all have the same keys (column names)."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    convert = converter(session)
    pick = itemgetter(*columns)
    if len(columns) == 1:
        return insert_rows(session, table, columns, [(convert.value(pick(row)),) for row in rows])
    return insert_rows(session, table, columns, [convert.row(pick(row)) for row in rows])
