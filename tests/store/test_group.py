"""Group commit: shared transactions, isolated failures, answers only after the commit."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from controller.store.engine import Store
from controller.store.group import GroupCommit
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


def test_closed_writer_refuses_and_queued_work_is_finished(store: Store) -> None:
    writer = GroupCommit(store)
    future = writer.submit(insert("last"))
    writer.close()
    assert future is not None and future.result(5) == "last"
    assert writer.submit(insert("late")) is None
    assert names(store) == ["last"]
