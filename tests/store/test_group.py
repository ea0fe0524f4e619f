"""Group commit: shared transactions, isolated failures, answers only after the commit."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import Session

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


def names(store: Store) -> list[str]:
    with store.read() as session:
        return sorted(session.execute(sa.select(nodes_t.c.name)).scalars())


def test_a_failing_unit_is_undone_alone_and_gets_its_own_error(store: Store) -> None:
    writer = GroupCommit(store)
    gate = threading.Event()
    # Hold the writer on a first unit so that the next ones are queued into one batch.
    first = writer.submit(lambda session: gate.wait(5))
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


def test_a_batch_that_cannot_commit_is_written_one_by_one(store: Store) -> None:
    writer = GroupCommit(store)
    gate = threading.Event()
    held = writer.submit(lambda session: gate.wait(5))
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
    held = writer.submit(lambda session: gate.wait(5))
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

    held = writer.submit(lambda session: gate.wait(5))
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

    held = writer.submit(lambda session: gate.wait(5))
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
        held = writer.submit(lambda session: gate.wait(5))
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
    held = writer.submit(lambda session: gate.wait(5))

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
