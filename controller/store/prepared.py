"""Statements of the request paths, compiled once per dialect and run on the driver.

Executing a Core or ORM statement, SQLAlchemy rebuilds it (coercing every column
and condition), derives its cache key, and processes parameters and results through
several layers: 0.3 to 1.5 ms of Python per statement on the statements the API runs
on every request, several times what SQLite needs to run them. A `Prepared` is
built once with SQLAlchemy Core (so names, types and predicates stay those of the
models), compiled once per dialect, and run on the DBAPI cursor of the caller's
transaction. Parameters and results go through the column types' own bind and
result processors, so what is written and read is exactly what the ORM path writes
and reads.

Not for statements whose shape depends on the values (IN lists, optional filters):
those stay ordinary Core statements.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

Processor = Callable[[Any], Any] | None

_CONNECTION = "ffrtmp.connection"


def connection_of(session: Session) -> Connection:
    """`session.connection()`, remembered for the session's current transaction.

    A write of the request paths asks for it a score of times (each prepared statement,
    each bulk write), and SQLAlchemy's own lookup costs 3 us each time. The connection
    is remembered in `session.info` with the transaction it belongs to, and asked for
    again once that transaction has ended.
    """
    cached = session.info.get(_CONNECTION)
    transaction = session.get_transaction()
    if cached is not None and transaction is not None and cached[0] is transaction:
        return cast(Connection, cached[1])
    connection = session.connection()
    session.info[_CONNECTION] = (session.get_transaction(), connection)
    return connection


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bind names, in placeholder order for positional drivers
    positional: bool
    binds: tuple[Processor, ...]
    types: tuple[Any, ...]  # the dialect's implementation of each result column's type
    row: type | None
    fixed: dict[str, Any]  # values the statement carries itself (`status == "ready"`), by bind name


def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError("a prepared statement cannot expand parameters (IN lists): use Core")
    positional = bool(compiled.positional)
    names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
    # The dialect's implementation of each type (what SQLAlchemy itself runs for this driver).
    binds = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
    columns = list(getattr(statement, "exported_columns", ()))
    types = tuple(c.type.dialect_impl(dialect) for c in columns)
    row = namedtuple("Row", [c.key for c in columns], rename=True) if columns else None
    fixed = {n: compiled.binds[n].effective_value for n in names if not compiled.binds[n].required}
    return _Compiled(str(compiled), names, positional, binds, types, row, fixed)


class Prepared:
    """A statement built once by `build(dialect_name)`, compiled once per dialect."""

    def __init__(self, build: Callable[[str], ClauseElement]) -> None:
        self._build = build
        self._compiled: dict[str, _Compiled] = {}
        self._results: dict[str, tuple[tuple[int, Callable[[Any], Any]], ...]] = {}
        self._lock = threading.Lock()

    def _for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(dialect.name)
                if compiled is None:
                    compiled = _compile(self._build(dialect.name), dialect)
                    self._compiled[dialect.name] = compiled
        return compiled

    def _params(self, compiled: _Compiled, values: Mapping[str, Any]) -> Any:
        if compiled.fixed:
            values = {**compiled.fixed, **values}
        converted = [
            value if process is None or value is None else process(value)
            for value, process in zip((values[n] for n in compiled.names), compiled.binds, strict=True)
        ]
        return tuple(converted) if compiled.positional else dict(zip(compiled.names, converted, strict=True))

    @staticmethod
    def _run(connection: Connection, compiled: _Compiled, params: Any) -> Any:
        # The DBAPI cursor of the connection's transaction (begun by `session.connection()`):
        # SQLAlchemy's result wrapper would cost more than the statement on short queries.
        cursor = connection.connection.cursor()
        cursor.execute(compiled.sql, params)
        return cursor

    def rows(self, connection: Connection, **values: Any) -> list[Any]:
        """Run the statement; its rows with typed values (attributes named as the columns)."""
        compiled = self._for(connection.dialect)
        cursor = self._run(connection, compiled, self._params(compiled, values))
        try:
            fetched = cursor.fetchall() if compiled.row is not None else []
            description = cursor.description
        finally:
            cursor.close()
        if compiled.row is None:
            return []
        processors = self._processors(connection.dialect, compiled, description)
        make = compiled.row._make  # type: ignore[attr-defined]
        if not processors:
            return [make(raw) for raw in fetched]
        out = []
        for raw in fetched:
            row = list(raw)
            for i, process in processors:
                value = row[i]
                if value is not None:
                    row[i] = process(value)
            out.append(make(row))
        return out

    def _processors(
        self, dialect: Dialect, compiled: _Compiled, description: Any
    ) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        """The result columns that need converting, with their processors (by column index)."""
        processors = self._results.get(dialect.name)
        if processors is None:
            # Some processors depend on the driver's type code of the column (PostgreSQL's
            # numerics): known once the statement has run, the same every time after.
            codes = [d[1] for d in description or ()] or [None] * len(compiled.types)
            found = (t.result_processor(dialect, code) for t, code in zip(compiled.types, codes, strict=True))
            processors = tuple((i, p) for i, p in enumerate(found) if p is not None)
            self._results[dialect.name] = processors
        return processors

    def tuples(self, connection: Connection, **values: Any) -> list[tuple[Any, ...]]:
        """Run the statement; its rows as the driver's plain tuples.

        Only for statements whose result columns need no conversion (integers, strings):
        a column whose type processes what the driver returns raises ValueError.
        """
        compiled = self._for(connection.dialect)
        cursor = self._run(connection, compiled, self._params(compiled, values))
        try:
            fetched = cursor.fetchall()
            description = cursor.description
        finally:
            cursor.close()
        if self._processors(connection.dialect, compiled, description):
            raise ValueError("tuples() of a statement whose results need converting: use rows()")
        return cast(list[tuple[Any, ...]], fetched)

    def first(self, connection: Connection, **values: Any) -> Any:
        """The first row, or None."""
        rows = self.rows(connection, **values)
        return rows[0] if rows else None

    def execute(self, connection: Connection, **values: Any) -> int:
        """Run a statement without rows; the number of rows it changed."""
        compiled = self._for(connection.dialect)
        cursor = self._run(connection, compiled, self._params(compiled, values))
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()


def columns_of(table: sa.Table, exclude: Sequence[str] = ()) -> list[sa.Column[Any]]:
    """The table's columns but `exclude`, in table order."""
    return [c for c in table.c if c.name not in exclude]
