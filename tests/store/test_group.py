"""Group commit: shared transactions, isolated failures, answers only after the commit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from controller.store import group
from controller.store.engine import Store
from controller.store.group import GroupCommit, Written
from controller.store.transitions import nodes_t

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def insert(name: str) -> object:
    def work(session: Session) -> str:
        session.execute(sa.insert(nodes_t).values(
            name=name, status="ready", slots=1, labels={}, reported_labels={}, unschedulable=False,
            declared=True, status_changed_at=T0, source="api", created_at=T0, updated_at=T0))
        return name
    return work


def hold(writer: GroupCommit, gate: threading.Event) -> Written[bool] | None:
    """A unit that keeps the writer busy until `gate` is set; returns once it runs, so that
    the units submitted next queue up into one batch."""
    running = threading.Event()

    def work(session: Session) -> bool:
        running.set()
        return gate.wait(5)

    held = writer.submit(work)
    assert running.wait(5)
    return held


def names(store: Store) -> list[str]:
    with store.read() as session:
        return sorted(session.execute(sa.select(nodes_t.c.name)).scalars())


def test_a_failing_unit_is_undone_alone_and_gets_its_own_error(store: Store) -> None:
    writer = GroupCommit(store)
    gate = threading.Event()
    # Hold the writer on a first unit so that the next ones are queued into one batch.
    first = hold(writer, gate)
    assert first is not None

    def half_then_fail(session: Session) -> None:
        insert("half")(session)
        raise ValueError("refused")

    units = [writer.submit(insert("a")), writer.submit(half_then_fail), writer.submit(insert("b"))]
    gate.set()
    assert first.result(5) is True
    assert [u.result(5) for u in (units[0], units[2]) if u is not None] == ["a", "b"]
    assert units[1] is not None
    with pytest.raises(ValueError, match="refused"):
        units[1].result(5)
    assert names(store) == ["a", "b"]
    assert writer.batches == 2 and writer.units == 4
    writer.close()


def test_without_savepoints_a_failing_unit_splits_its_batch_in_three(store: Store) -> None:
    writer = GroupCommit(store, savepoints=False)  # PostgreSQL's setting (savepoints cost round trips)
    gate = threading.Event()
    first = hold(writer, gate)

    def half_then_fail(session: Session) -> None:
        insert("half")(session)
        raise ValueError("refused")

    def grow(session: Session) -> int:  # needs "a", written before it in the batch
        return session.execute(sa.update(nodes_t).where(nodes_t.c.name == "a")
                               .values(slots=nodes_t.c.slots + 1)).rowcount

    units = [writer.submit(insert("a")), writer.submit(half_then_fail), writer.submit(insert("b")),
             writer.submit(grow)]
    gate.set()
    assert first is not None and first.result(5) is True
    assert [u.result(5) for u in (units[0], units[2], units[3]) if u is not None] == ["a", "b", 1]
    assert units[1] is not None
    with pytest.raises(ValueError, match="refused"):
        units[1].result(5)
    assert names(store) == ["a", "b"]  # the failed unit's insert undone with it
    # The held unit, then [a], then the failed one alone (no commit), then [b, grow]:
    # not one transaction per unit.
    assert writer.batches == 3 and writer.units == 4
    writer.close()


def test_a_batch_that_cannot_commit_is_written_one_by_one(store: Store) -> None:
    writer = GroupCommit(store)
    gate = threading.Event()
    held = hold(writer, gate)
    # The same name twice: without savepoints the second insert fails the whole batch;
    # written again one by one, only that one fails.
    units = [writer.submit(insert("x"), savepoint=False), writer.submit(insert("x"), savepoint=False),
             writer.submit(insert("y"), savepoint=False)]
    gate.set()
    assert held is not None and held.result(5) is True
    outcomes = []
    for unit in units:
        assert unit is not None
        try:
            outcomes.append(unit.result(5))
        except sa.exc.IntegrityError:
            outcomes.append("refused")
    assert outcomes == ["x", "refused", "y"]
    assert names(store) == ["x", "y"]
    writer.close()


def test_units_run_in_key_order_within_a_batch(store: Store) -> None:
    writer = GroupCommit(store)
    gate = threading.Event()
    order: list[str] = []
    held = hold(writer, gate)
    futures = [writer.submit(lambda session, k=k: order.append(k), key=("node", k)) for k in ("c", "a", "b")]
    gate.set()
    assert held is not None
    held.result(5)
    for f in futures:
        assert f is not None
        f.result(5)
    assert order == ["a", "b", "c"]
    writer.close()


def test_units_of_one_together_function_run_in_one_call_in_their_place(store: Store) -> None:
    writer = GroupCommit(store)
    gate = threading.Event()
    calls: list[list[str]] = []
    order: list[str] = []

    def together(session: Session, items: list[str]) -> list[str]:
        calls.append(list(items))
        order.append("together")
        return [item.upper() for item in items]

    held = hold(writer, gate)
    units = [writer.submit_together(together, "b", key=("node", "b")),
             writer.submit(lambda session: order.append("a"), key=("node", "a")),
             writer.submit_together(together, "c", key=("node", "c")),
             writer.submit(lambda session: order.append("d"), key=("node", "d"))]
    gate.set()
    assert held is not None and held.result(5) is True
    assert [u.result(5) for u in units if u is not None] == ["B", None, "C", None]
    assert calls == [["b", "c"]]  # one call, where the first of them runs (key order)
    assert order == ["a", "together", "d"]
    writer.close()


def test_a_together_call_that_fails_is_retried_one_unit_at_a_time(store: Store) -> None:
    writer = GroupCommit(store)
    gate = threading.Event()
    calls: list[list[str]] = []

    def together(session: Session, items: list[str]) -> list[str]:
        calls.append(list(items))
        if "bad" in items:
            raise RuntimeError("the database failed")
        return items

    held = hold(writer, gate)
    units = [writer.submit_together(together, name, rescue=lambda exc: f"rescued: {exc}")
             for name in ("ok", "bad", "fine")]
    gate.set()
    assert held is not None and held.result(5) is True
    assert [u.result(5) for u in units if u is not None] == ["ok", "rescued: the database failed", "fine"]
    assert calls[0] == ["ok", "bad", "fine"] and sorted(map(tuple, calls[1:])) == [("bad",), ("fine",), ("ok",)]
    writer.close()


def test_closed_writer_refuses_and_queued_work_is_finished(store: Store) -> None:
    writer = GroupCommit(store)
    future = writer.submit(insert("last"))
    writer.close()
    assert future is not None and future.result(5) == "last"
    assert writer.submit(insert("late")) is None
    assert names(store) == ["last"]


def test_coroutines_await_their_units_and_get_results_or_exceptions(store: Store) -> None:
    writer = GroupCommit(store)

    def fail(session: Session) -> None:
        raise ValueError("refused")

    async def scenario() -> tuple[list[object], str, object]:
        gate = threading.Event()
        held = writer.submit(lambda session: gate.wait(5))  # staged: the loop hands it over with the rest
        written = [writer.submit(insert(f"n{i}")) for i in range(20)]
        failed = writer.submit(fail)
        transformed = writer.submit(insert("t"), then=lambda name: name.upper())
        gate.set()  # the 22 queued units commit as one batch, handed to this loop at once
        assert held is not None and failed is not None and transformed is not None
        results = [await w for w in written if w is not None]
        with pytest.raises(ValueError) as refused:
            await failed
        late = await transformed  # settled before it is awaited: no hop through the loop
        return results, str(refused.value), late

    results, refused, late = asyncio.run(scenario())
    assert results == [f"n{i}" for i in range(20)]
    assert refused == "refused" and late == "T"
    writer.close()


def test_an_abandoned_await_does_not_break_the_batch(store: Store) -> None:
    writer = GroupCommit(store)
    gate = threading.Event()
    held = hold(writer, gate)

    async def scenario() -> None:
        slow = writer.submit(insert("abandoned"))
        assert slow is not None
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(_awaited(slow))), 0.01)

    asyncio.run(scenario())  # the loop is closed before the unit commits
    gate.set()
    assert held is not None and held.result(5) is True
    after = writer.submit(insert("after"))
    assert after is not None and after.result(5) == "after"
    assert names(store) == ["abandoned", "after"]
    writer.close()


async def _awaited(written: Written[str]) -> str:
    return await written


# --- several writers on PostgreSQL ----------------------------------------------------------------

@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_on_postgresql_writer_threads_run_batches_side_by_side(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group, "IDLE_EXIT_SECONDS", 0.2)
    writer = GroupCommit(store, writers=3)
    barrier = threading.Barrier(3, timeout=5)  # broken unless three batches run at once
    ran_on: list[str] = []

    def meet(session: Session) -> int:
        ran_on.append(threading.current_thread().name)
        session.execute(sa.text("SELECT 1"))
        return barrier.wait()

    units = []
    for i in range(3):  # each submitted once the one before runs: all writers are busy
        units.append(writer.submit(meet))
        deadline = time.monotonic() + 5
        while len(ran_on) <= i and time.monotonic() < deadline:
            time.sleep(0.005)
    extra = writer.submit(insert("later"))  # all three busy: queued, no fourth thread
    assert sorted(u.result(10) for u in units if u is not None) == [0, 1, 2]
    assert extra is not None and extra.result(10) == "later"
    assert len(set(ran_on)) == 3 and len(writer._threads) <= 3
    deadline = time.monotonic() + 5
    while writer._threads and time.monotonic() < deadline:  # idle threads end
        time.sleep(0.02)
    assert not writer._threads
    assert writer.submit(insert("again")) is not None  # and start again with the next unit
    writer.close()
    assert names(store) == ["again", "later"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_deadlock_between_two_batches_is_written_again_not_answered(store: Store) -> None:
    for unit in (insert("a"), insert("b")):
        with store.write() as session:
            unit(session)
    writer = GroupCommit(store, writers=2)
    locked = {"a": threading.Event(), "b": threading.Event()}
    runs: list[str] = []

    def both(first: str, second: str) -> Callable[[Session], str]:
        def work(session: Session) -> str:
            runs.append(first)
            bump = sa.update(nodes_t).values(slots=nodes_t.c.slots + 1)
            session.execute(bump.where(nodes_t.c.name == first))
            locked[first].set()
            locked[second].wait(5)  # each holds its row and wants the other's: a deadlock
            session.execute(bump.where(nodes_t.c.name == second))
            return first
        return work

    units = [writer.submit(both("a", "b"))]
    assert locked["a"].wait(5)  # running: the next unit goes to a second writer
    units.append(writer.submit(both("b", "a")))
    assert sorted(u.result(30) for u in units if u is not None) == ["a", "b"]
    assert len(runs) == 3  # one of them was aborted by PostgreSQL and ran again
    with store.read() as session:
        slots = {name: n for name, n in session.execute(sa.select(nodes_t.c.name, nodes_t.c.slots))}
    assert slots == {"a": 3, "b": 3}
    writer.close()


def test_only_deadlocks_and_serialization_failures_are_transient() -> None:
    class DriverError(Exception):
        def __init__(self, sqlstate: str | None) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    assert group.transient(sa.exc.OperationalError("UPDATE", {}, DriverError("40P01")))
    assert group.transient(DriverError("40001"))
    assert not group.transient(sa.exc.IntegrityError("INSERT", {}, DriverError("23505")))
    assert not group.transient(ValueError("refused"))
