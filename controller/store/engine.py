"""Engines and sessions: SQLite tuned for one writer, PostgreSQL through psycopg 3.

Reads and writes are opened differently. On SQLite a write transaction starts with
`BEGIN IMMEDIATE`, so it takes the write lock up front and waits (busy timeout)
instead of failing half-way with "database is locked" when two writers meet; a
read starts with a plain deferred `BEGIN` and, under WAL, never blocks a writer.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from controller.config import DatabaseConfig
from controller.store.checkpoint import WalCheckpointer

_WRITE = "ffrtmp_write"
_UNCHECKED = "ffrtmp_unchecked_references"
_WAL_SIZE_LIMIT = 64 * 1024 * 1024


class StoreError(RuntimeError):
    """The database cannot be used as configured."""


def normalize_url(url: str) -> URL:
    """Accept `postgresql://` and `postgres://` as psycopg 3 URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_memory(url: URL) -> bool:
    """True for an in-memory SQLite database."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_store_engine(config: DatabaseConfig) -> Engine:
    """An engine for `config.url` with the pragmas and transaction modes described above."""
    url = normalize_url(config.url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, config)
    if backend == "postgresql":
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise StoreError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


def _sqlite_engine(url: URL, config: DatabaseConfig) -> Engine:
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": config.sqlite_busy_timeout_seconds}
    }
    memory = is_memory(url)
    if memory:
        # One shared connection, so every session sees the same in-memory database.
        kwargs["poolclass"] = StaticPool
    engine = sa.create_engine(url, **kwargs)
    synchronous = config.sqlite_synchronous.upper()
    busy_ms = int(config.sqlite_busy_timeout_seconds * 1000)
    cache_kib = config.sqlite_cache_mib * 1024

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit transactions are off).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if cache_kib:
            cursor.execute(f"PRAGMA cache_size=-{cache_kib}")
        if not memory:
            # The WAL file shrinks back to this after a burst (its pages are reused below it).
            cursor.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        options = connection.get_execution_options()
        if options.get(_WRITE):
            if options.get(_UNCHECKED):
                # Outside a transaction or not at all: SQLite ignores the pragma inside one.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.connection.info[_UNCHECKED] = True
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        # Back in the pool after its transaction ended: checks on again for the next user.
        if record is not None and record.info.pop(_UNCHECKED, False):
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


class FifoLock:
    """A reentrant lock handed over in arrival order.

    `threading.RLock` lets the thread that releases it take it straight back: the
    group-commit writer, committing batch after batch, kept the reconcile pass waiting
    for the SQLite write lock for up to half a second per step under load (measured:
    5 ms of work, 260 ms of wall time). Here a release hands the lock to the longest
    waiter.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiters: deque[tuple[int, threading.Lock]] = deque()

    def acquire(self) -> None:
        """Take the lock (again, in the thread that holds it), after those who asked first."""
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return
            if self._owner is None and not self._waiters:
                self._owner, self._depth = me, 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append((me, gate))
        gate.acquire()  # released by `release`, which made us the owner

    def release(self) -> None:
        """Give the lock up; the longest waiter, if any, owns it now."""
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a FifoLock this thread does not hold")
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                self._owner, gate = self._waiters.popleft()
                self._depth = 1
                gate.release()
            else:
                self._owner = None

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class Store:
    """The database handle: an engine plus read and write sessions."""

    def __init__(self, engine: Engine, *, over: Store | None = None) -> None:
        """A store on `engine`; `over`: a view of that store (subclasses), sharing its write lock."""
        self.engine = engine
        self._write_engine = engine.execution_options(**{_WRITE: True})
        self._unchecked_engine = engine.execution_options(**{_WRITE: True, _UNCHECKED: True})
        # SQLite has one writer at a time. Threads of this process that find the write
        # lock taken would each sleep in SQLite's busy handler (back-off steps of 1, 2,
        # 5, 10, ... up to 100 ms, long after the lock is free); queued on this lock
        # instead, the next writer (the one that asked first) begins the moment the
        # previous one commits. Other processes (the CLI) still meet the busy timeout.
        # PostgreSQL needs no such lock.
        self._checkpointer: WalCheckpointer | None = None
        if over is not None:
            # One lock per database file and process: a second one would let this view's
            # writers meet the other's in SQLite's busy handler again.
            self._write_lock: FifoLock | None = over._write_lock
            return
        self._write_lock = FifoLock() if engine.dialect.name == "sqlite" else None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", self._on_sqlite_connect)

    def _on_sqlite_connect(self, dbapi_connection: Any, _record: Any) -> None:
        if self._checkpointer is not None:
            dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    def start_checkpoints(self, interval: float) -> bool:
        """Checkpoint the WAL from a thread every `interval` s, not inside commits (SQLite files).

        See `controller.store.checkpoint`. Returns False where there is nothing to do
        (PostgreSQL, an in-memory database, `interval` 0). Pooled connections are
        closed so that every connection from now on leaves checkpoints to the thread.
        """
        path = self.engine.url.database
        if self.dialect != "sqlite" or is_memory(self.engine.url) or interval <= 0 or path is None:
            return False
        if self._checkpointer is None:
            self._checkpointer = WalCheckpointer(path, interval)
            self.engine.dispose()
            self._checkpointer.start()
        return True

    @classmethod
    def from_config(cls, config: DatabaseConfig) -> Store:
        """Open the database described by `config` (no schema changes)."""
        return cls(create_store_engine(config))

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @contextmanager
    def write(self, check_references: bool = True) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any exception.

        `check_references=False` skips SQLite's foreign-key checks for this transaction.
        Only for a writer that takes every referenced id from rows it read in the same
        transaction: SQLite has one writer at a time, so those rows cannot have gone.
        The reconcile pass's scheduling is one: binding 10,000 jobs to nodes it has just
        read, the check on `jobs.node_id` doubled the cost of the jobs' UPDATE (SQLite
        checks it on every row whose `node_id` and `status` change together). PostgreSQL
        always checks.
        """
        if self._write_lock is None:
            with Session(self._write_engine, expire_on_commit=False) as session, session.begin():
                yield session
            return
        engine = self._write_engine if check_references else self._unchecked_engine
        with self._write_lock, Session(engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (rolled back at the end)."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
            finally:
                session.rollback()

    def dispose(self) -> None:
        """Stop background checkpoints and close every pooled connection."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.engine.dispose()
