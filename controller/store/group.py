"""Group commit: the small writes of many requests in one transaction.

A worker report or an idle heartbeat changes a row or two, yet each in its own
transaction pays a commit (WAL frames and, every thousand pages, a checkpoint on
SQLite; a round trip and a WAL flush on PostgreSQL) and a thread hand-off. Here
callers hand a unit of work to one writer thread, which runs everything queued in
one transaction, each unit inside its own savepoint, and commits once: under load a
batch holds what arrived while the previous one committed; a lone request is run
at once. A unit's result (or exception) is delivered only after the commit, so
nothing is acknowledged that is not durable.

A unit that raises is rolled back to its savepoint and its exception is delivered
to its caller; the other units of the batch are unaffected. If the batch cannot
commit, every unit of it is run again alone, in its own transaction, so that one
bad unit cannot fail the others.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlmodel import Session

from controller.store.engine import Store

log = logging.getLogger("controller.store")

T = TypeVar("T")

MAX_BATCH = 256
"""At most this many units share a transaction (bounds how long row locks are held)."""

_SAVEPOINT = "SAVEPOINT ffrtmp_unit"
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT ffrtmp_unit"
_RELEASE = "RELEASE SAVEPOINT ffrtmp_unit"

IDLE_EXIT_SECONDS = 2.0
"""The writer thread ends after this long without work, and starts again with the next unit."""


@dataclass(frozen=True, slots=True)
class _Unit(Generic[T]):
    work: Callable[[Session], T]
    key: tuple[str, ...]
    done: Future[T]
    savepoint: bool


class GroupCommit:
    """One writer thread that runs units of work in shared transactions."""

    def __init__(self, store: Store, max_batch: int = MAX_BATCH, name: str = "ffrtmp-writer") -> None:
        self.store = store
        self.max_batch = max_batch
        self.name = name
        self._queue: queue.SimpleQueue[_Unit[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0
        self.units = 0

    @property
    def closed(self) -> bool:
        """True once `close()` was called: new work is refused (callers write alone)."""
        return self._closed

    def submit(
        self, work: Callable[[Session], T], key: tuple[str, ...] = (), savepoint: bool = True
    ) -> Future[T] | None:
        """Queue `work(session)`; its future resolves once its transaction has committed.

        Units of a batch run in `key` order (then arrival order), so that two batches,
        here or on another replica, take row locks in the same order. Without
        `savepoint`, for work that raises only when the database fails, an exception
        undoes the whole batch, whose units are then written one by one. None when
        closed: the caller then runs the work in a transaction of its own.
        """
        done: Future[T] = Future()
        with self._lock:
            if self._closed:
                return None
            self._queue.put(_Unit(work, key, done, savepoint))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return done

    def close(self) -> None:
        """Finish what is queued, then refuse new work."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)  # after every unit already queued
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if first is None:
                return
            batch = [first]
            end = False
            while len(batch) < self.max_batch:
                try:
                    unit = self._queue.get_nowait()
                except queue.Empty:
                    break
                if unit is None:
                    end = True
                    break
                batch.append(unit)
            batch.sort(key=lambda u: u.key)  # stable: arrival order within a key
            self._commit(batch)
            if end:
                return

    def _commit(self, batch: list[_Unit[Any]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.store.write() as session:
                for unit in batch:
                    outcomes.append(self._attempt(session, unit))
        except Exception as exc:
            if len(batch) == 1:
                self._deliver(batch[0], (False, exc))
                return
            log.warning("[Store] A batch of %d writes could not commit (%s): writing them one by one",
                        len(batch), exc)
            for unit in batch:
                self._commit([unit])
            return
        self.batches += 1
        self.units += len(batch)
        for unit, outcome in zip(batch, outcomes, strict=True):
            self._deliver(unit, outcome)

    @staticmethod
    def _attempt(session: Session, unit: _Unit[Any]) -> tuple[bool, Any]:
        if not unit.savepoint:
            return True, unit.work(session)  # an exception fails the batch (see `_commit`)
        # The savepoint on the driver's cursor: the session's nested transaction costs several
        # times more, and units write with Core statements only (no ORM state to roll back).
        cursor = session.connection().connection.cursor()
        try:
            cursor.execute(_SAVEPOINT)
            try:
                result = unit.work(session)
            except Exception as exc:
                cursor.execute(_ROLLBACK_TO)
                cursor.execute(_RELEASE)
                return False, exc
            cursor.execute(_RELEASE)
        finally:
            cursor.close()
        return True, result

    @staticmethod
    def _deliver(unit: _Unit[Any], outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            unit.done.set_result(value)
        else:
            unit.done.set_exception(value)
