"""Group commit: the small writes of many requests in one transaction.

A worker report or an idle heartbeat changes a row or two, yet each in its own
transaction pays a commit (WAL frames and, every thousand pages, a checkpoint on
SQLite; a round trip and a WAL flush on PostgreSQL) and a thread hand-off. Here
callers hand a unit of work to one writer thread, which runs everything queued in
one transaction, each unit inside its own savepoint, and commits once: under load a
batch holds what arrived while the previous one committed; a lone request is run
at once. A unit's result (or exception) is delivered only after the commit, so
nothing is acknowledged that is not durable. It comes as an `Written`, awaited by
a coroutine of the API or waited for by a thread; the results of one batch reach
each event loop in one hand-off, not one wake-up per request.

A unit that raises is rolled back to its savepoint and its exception is delivered
to its caller; the other units of the batch are unaffected. If the batch cannot
commit, every unit of it is run again alone, in its own transaction, so that one
bad unit cannot fail the others. A deadlock or serialization failure (PostgreSQL
aborts one of two transactions that wait on each other) is no unit's fault: it
fails the batch, whose units are then run alone, each up to `TRANSIENT_TRIES` times.

On PostgreSQL a savepoint costs two round trips (of a report's seven or so), so
there the units run without them (`savepoints=False`) and a unit that raises undoes
the whole transaction: the units before it are written again together, the failed
one alone (its own outcome), then those after it together. A failure costs at most
three transactions more, however large the batch.

On PostgreSQL several writer threads may run batches side by side (`writers`): a
commit there waits for a round trip per statement and for the WAL flush, time in
which another batch can run; the database's row locks keep them apart, as they keep
replicas apart. A second thread starts only when work is queued and no writer is
waiting for it. On SQLite one writer is all there is (it writes one transaction at
a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sqlmodel import Session

from controller.store.engine import Store

log = logging.getLogger("controller.store")

T = TypeVar("T")

MAX_BATCH = 256
"""At most this many units share a transaction (bounds how long row locks are held)."""

_SAVEPOINT = "SAVEPOINT ffrtmp_unit"
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT ffrtmp_unit"
_RELEASE = "RELEASE SAVEPOINT ffrtmp_unit"

TRANSIENT_TRIES = 3
"""How many times a unit run alone is tried when its transaction deadlocks."""

_TRANSIENT_SQLSTATES = ("40P01", "40001")  # deadlock detected, serialization failure

IDLE_EXIT_SECONDS = 2.0
"""The writer thread ends after this long without work, and starts again with the next unit."""


_Handoffs = dict[asyncio.AbstractEventLoop, list[tuple["asyncio.Future[Any]", bool, Any]]]


class Written(Generic[T]):
    """What a unit of work came to, known once its transaction has committed.

    Await it on an event loop (once), or wait for it from a thread with `result()`.
    Lighter than a `concurrent.futures.Future` wrapped for asyncio: one lock, no
    condition, and no thread hop at all when the result is there before it is awaited.
    """

    __slots__ = ("_done", "_event", "_lock", "_ok", "_value", "_waiter")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._ok = False
        self._value: Any = None
        self._event: threading.Event | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]] | None = None

    @classmethod
    def of(cls, value: T) -> Written[T]:
        """A result that is already known."""
        outcome: Written[T] = cls()
        outcome._done, outcome._ok, outcome._value = True, True, value
        return outcome

    def done(self) -> bool:
        """True once the result (or exception) is known."""
        return self._done

    def result(self, timeout: float | None = None) -> T:
        """Block until known; the result, or raise the exception (TimeoutError after `timeout`)."""
        with self._lock:
            if not self._done and self._event is None:
                self._event = threading.Event()
            event = None if self._done else self._event
        if event is not None and not event.wait(timeout):
            raise TimeoutError("the write has not committed yet")
        return self._unwrap()

    def __await__(self) -> Generator[Any, None, T]:
        with self._lock:
            if self._done:
                waiting = None
            else:
                if self._waiter is not None:
                    raise RuntimeError("a Written is awaited once")
                loop = asyncio.get_running_loop()
                waiting = loop.create_future()
                self._waiter = (loop, waiting)
        if waiting is not None:
            yield from waiting
        return self._unwrap()

    def _unwrap(self) -> T:
        if self._ok:
            return cast(T, self._value)
        raise self._value

    def _settle(self, ok: bool, value: Any, handoffs: _Handoffs) -> None:
        """Record the result (writer thread); a waiting coroutine is told through `handoffs`."""
        with self._lock:
            self._done, self._ok, self._value = True, ok, value
            event, waiter = self._event, self._waiter
        if event is not None:
            event.set()
        if waiter is not None:
            handoffs.setdefault(waiter[0], []).append((waiter[1], ok, value))


class _UnitFailed(Exception):
    """A unit raised in a batch written without savepoints: which one, and what."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"unit {index} failed: {error}")
        self.index = index
        self.error = error


def transient(exc: BaseException) -> bool:
    """True for a deadlock or serialization failure: the same transaction may well succeed again."""
    original = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's exception
    return getattr(original, "sqlstate", None) in _TRANSIENT_SQLSTATES


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0]


def _wake(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the event loop: hand each waiting coroutine its result."""
    for waiting, ok, value in items:
        if waiting.done():
            continue  # the request went away (cancelled)
        if ok:
            waiting.set_result(value)
        else:
            waiting.set_exception(value)


def _finish(unit: _Unit[Any], ok: bool, value: Any) -> tuple[bool, Any]:
    """A unit's result as its caller gets it: through `then` or `rescue` (writer thread)."""
    try:
        if ok and unit.then is not None:
            return True, unit.then(value)
        if not ok and unit.rescue is not None:
            return True, unit.rescue(value)
    except Exception as exc:
        return False, exc
    return ok, value


Together = Callable[[Session, list[Any]], list[Any]]
"""Work done for several units in one call: their items in, one result per item out."""


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a call per field
class _Unit(Generic[T]):
    work: Callable[[Session], Any] | None  # None: `together` with `item` alone
    key: tuple[str, ...]
    written: Written[T]
    savepoint: bool
    then: Callable[[Any], T] | None
    rescue: Callable[[Exception], T] | None
    together: Together | None = None
    item: Any = None


class GroupCommit:
    """One writer thread that runs units of work in shared transactions."""

    def __init__(
        self, store: Store, max_batch: int = MAX_BATCH, name: str = "ffrtmp-writer", writers: int = 1,
        savepoints: bool = True,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.name = name
        self.writers = writers
        """At most this many writer threads run batches at once."""
        self.savepoints = savepoints
        """False: units run without savepoints; one that raises splits its batch (module doc)."""
        self._queue: queue.SimpleQueue[list[_Unit[Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Units submitted on an event loop wait for the end of the loop's current turn and
        # go to the writer together: one wake-up of its thread, not one per request.
        self._staged: list[_Unit[Any]] = []
        self._flush_scheduled = False
        self._threads: set[threading.Thread] = set()
        self._waiting = 0
        """Writer threads waiting for work (under `_lock`)."""
        self._closed = False
        self.batches = 0
        self.units = 0

    @property
    def closed(self) -> bool:
        """True once `close()` was called: new work is refused (callers write alone)."""
        return self._closed

    def submit(
        self,
        work: Callable[[Session], Any],
        key: tuple[str, ...] = (),
        savepoint: bool = True,
        then: Callable[[Any], T] | None = None,
        rescue: Callable[[Exception], T] | None = None,
    ) -> Written[T] | None:
        """Queue `work(session)`; its outcome is known once its transaction has committed.

        Units of a batch run in `key` order (then arrival order), so that two batches,
        here or on another replica, take row locks in the same order. Without
        `savepoint`, for work that raises only when the database fails, an exception
        undoes the whole batch, whose units are then written one by one. After the
        commit, in the writer thread, `then(result)` makes the outcome, and
        `rescue(exception)` the outcome of a failure (an exception of either is the
        outcome). None when closed: the caller then runs the work in a transaction of
        its own.
        """
        return self._queue_unit(_Unit(work, key, Written(), savepoint, then, rescue))

    def submit_together(
        self,
        together: Together,
        item: Any,
        key: tuple[str, ...] = (),
        rescue: Callable[[Exception], T] | None = None,
    ) -> Written[T] | None:
        """Queue `item` for `together`: the units of one batch with the same function are
        written by one call of it, `together(session, items)`, where the first of them
        runs; each unit's outcome is its item's result.

        For many small writes of one kind (idle heartbeats): one statement for all of
        them instead of one or two each. `together` must raise only when the database
        fails (it runs without savepoints): the batch is then written one unit at a time,
        and an item that fails alone gets `rescue(exception)` as its outcome.
        """
        return self._queue_unit(_Unit(None, key, Written(), False, None, rescue, together, item))

    def _queue_unit(self, unit: _Unit[T]) -> Written[T] | None:
        written = unit.written
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            if self._closed:
                return None
            if loop is None:
                self._hand_over([unit])
            else:
                self._staged.append(unit)
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    loop.call_soon(self._flush)
        return written

    def _flush(self) -> None:
        """Hand the units staged during this turn of the event loop to the writer."""
        with self._lock:
            staged, self._staged, self._flush_scheduled = self._staged, [], False
            if staged:
                self._hand_over(staged)

    def _hand_over(self, units: list[_Unit[Any]]) -> None:
        # Under self._lock: a writer thread ends only when it finds nothing under it.
        self._queue.put(units)
        if self._waiting == 0 and len(self._threads) < self.writers:
            thread = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads) + 1}",
                                      daemon=True)
            self._threads.add(thread)
            self._waiting += 1  # until it takes its first batch
            thread.start()

    def close(self) -> None:
        """Finish what is queued, then refuse new work."""
        with self._lock:
            self._closed = True
            if self._staged:  # its loop may never turn again
                self._hand_over(self._staged)
                self._staged = []
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)  # after every unit already queued: one end per thread
        for thread in threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._threads.discard(me)
                        self._waiting -= 1
                        return
                continue
            with self._lock:
                self._waiting -= 1
                if first is None:
                    self._threads.discard(me)
                    return
            batch = list(first)
            end = False
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    end = True
                    break
                batch.extend(more)
            batch.sort(key=lambda u: u.key)  # stable: arrival order within a key
            for start in range(0, len(batch), self.max_batch):
                self._commit(batch[start:start + self.max_batch])
            with self._lock:
                if end:
                    self._threads.discard(me)
                    return
                self._waiting += 1

    def _commit(self, batch: list[_Unit[Any]], tries: int = 1) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            with self.store.write() as session:
                results = self._run_units(session, batch)
        except _UnitFailed as failed:
            if len(batch) == 1:
                self._deliver(batch, [(False, failed.error)])
                return
            # Written again in arrival order: the units before the failed one (they wrote
            # without error), the failed one alone, then the rest.
            i = failed.index
            for part in (batch[:i], batch[i:i + 1], batch[i + 1:]):
                if part:
                    self._commit(part)
            return
        except Exception as exc:
            if len(batch) == 1:
                if transient(exc) and tries < TRANSIENT_TRIES:
                    log.info("[Store] A write was aborted (%s): trying again", _first_line(exc))
                    self._commit(batch, tries + 1)
                else:
                    self._deliver(batch, [(False, exc)])
                return
            log.warning("[Store] A batch of %d writes could not commit (%s): writing them one by one",
                        len(batch), _first_line(exc))
            for unit in batch:
                self._commit([unit])
            return
        self.batches += 1
        self.units += len(batch)
        self._deliver(batch, results)

    def _run_units(self, session: Session, batch: list[_Unit[Any]]) -> list[tuple[bool, Any]]:
        """Every unit's (ok, value), in batch order; units run together at the first one's place."""
        results: list[tuple[bool, Any]] = []
        early: dict[int, tuple[bool, Any]] = {}
        for index, unit in enumerate(batch):
            if index in early:
                results.append(early.pop(index))
            elif unit.together is not None and len(batch) > 1:
                group = [i for i in range(index, len(batch)) if batch[i].together == unit.together]
                values = unit.together(session, [batch[i].item for i in group])
                early.update((i, (True, value)) for i, value in zip(group, values, strict=True))
                results.append(early.pop(index))
            elif unit.work is not None and unit.savepoint and not self.savepoints:
                try:
                    results.append((True, unit.work(session)))
                except Exception as exc:
                    if transient(exc):
                        raise  # not this unit's fault: the batch is written again (see `_commit`)
                    raise _UnitFailed(index, exc) from exc
            else:
                results.append(self._attempt(session, unit))
        return results

    @staticmethod
    def _attempt(session: Session, unit: _Unit[Any]) -> tuple[bool, Any]:
        if unit.work is None:
            assert unit.together is not None
            return True, unit.together(session, [unit.item])[0]  # as without a savepoint
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
                if transient(exc):
                    raise  # not this unit's fault: the batch is written again (see `_commit`)
                cursor.execute(_ROLLBACK_TO)
                cursor.execute(_RELEASE)
                return False, exc
            cursor.execute(_RELEASE)
        finally:
            cursor.close()
        return True, result

    @staticmethod
    def _deliver(batch: list[_Unit[Any]], results: list[tuple[bool, Any]]) -> None:
        handoffs: _Handoffs = {}
        for unit, result in zip(batch, results, strict=True):
            unit.written._settle(*_finish(unit, *result), handoffs)
        for loop, items in handoffs.items():
            # RuntimeError: that loop is closed, its requests are gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, items)
