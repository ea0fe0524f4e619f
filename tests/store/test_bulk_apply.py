"""The bulk paths of the one door and of the pass's reads, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from controller.domain.states import JobStatus, Priority, Reason
from controller.store import passes
from controller.store.bulk import Converter, update_rows
from controller.store.engine import Store
from controller.store.models import AuditLog, Job, JobAttempt, Node, Scenario
from controller.store.transitions import ConcurrentChange, JobTransition, apply_job_transitions

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
jobs_t: sa.Table = Job.__table__  # type: ignore[attr-defined]
nodes_t: sa.Table = Node.__table__  # type: ignore[attr-defined]
attempts_t: sa.Table = JobAttempt.__table__  # type: ignore[attr-defined]
audit_t: sa.Table = AuditLog.__table__  # type: ignore[attr-defined]
scenarios_t: sa.Table = Scenario.__table__  # type: ignore[attr-defined]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def seed(store: Store, jobs: list[dict[str, Any]], nodes: list[dict[str, Any]] | None = None) -> None:
    """Rows straight into the tables (defaults for what a test does not care about)."""
    with store.write() as session:
        session.execute(sa.insert(scenarios_t), [{
            "name": "enc", "command": ["true"], "defaults": {}, "requires": {}, "labels": {},
            "source": "api", "spec_hash": "x", "created_at": T0, "updated_at": T0,
        }])
        for i, node in enumerate(nodes or [{"name": "w1"}]):
            session.execute(sa.insert(nodes_t).values({
                "status": "ready", "slots": 4, "labels": {}, "reported_labels": {}, "unschedulable": False,
                "declared": False, "last_heartbeat": T0, "status_changed_at": T0, "source": "heartbeat",
                "created_at": T0, "updated_at": T0, "id": i + 1, **node,
            }))
        for job in jobs:  # one by one: the rows set different columns
            session.execute(sa.insert(jobs_t).values({
                "scenario_name": "enc", "parameters": {}, "status": "pending",
                "priority": Priority.MEDIUM.rank, "attempt": 0, "retry_count": 0, "node_selector": {},
                "suspend": False, "fail_on_exit_codes": [], "labels": {}, "source": "api",
                "spec_hash": "x", "created_at": T0, "updated_at": T0, **job,
            }))


def rows(store: Store, table: sa.Table, *where: Any) -> list[Any]:
    with store.read() as session:
        return list(session.execute(sa.select(table).where(*where).order_by(table.c.id)))


def test_transitions_of_several_shapes_in_any_order_write_rows_history_and_audit(store: Store) -> None:
    seed(store, [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b", "status": "running", "node_id": 1, "attempt": 1},
        {"id": 3, "name": "c"},
        {"id": 4, "name": "d", "status": "running", "node_id": 1, "attempt": 1, "retry_count": 3},
    ])
    with store.write() as session:
        session.execute(sa.insert(attempts_t), [
            {"job_id": j, "attempt": 1, "node_name": "w1", "status": "running", "assigned_at": T0}
            for j in (2, 4)
        ])
    deadline = at(61)
    retry_at = at(5)
    transitions = [  # deliberately not in id order, and mixing shapes
        JobTransition(3, "c", JobStatus.PENDING, JobStatus.ASSIGNED, str(Reason.SCHEDULED), 0,
                      node_id=1, node_name="w1", timeout_at=deadline),
        JobTransition(4, "d", JobStatus.RUNNING, JobStatus.FAILED, str(Reason.MAX_RETRIES_EXCEEDED), 1,
                      message="max retries exceeded", node_name="w1", retry_count=3),
        JobTransition(1, "a", JobStatus.PENDING, JobStatus.ASSIGNED, str(Reason.SCHEDULED), 0,
                      node_id=1, node_name="w1", timeout_at=deadline),
        JobTransition(2, "b", JobStatus.RUNNING, JobStatus.PENDING, str(Reason.NODE_LOST), 1,
                      message="lost", node_name="w1", retry_count=1, not_before=retry_at),
    ]
    with store.write() as session:
        apply_job_transitions(session, transitions, at(1))

    jobs = {r.name: r for r in rows(store, jobs_t)}
    assert (jobs["a"].status, jobs["a"].attempt, jobs["a"].node_id) == ("assigned", 1, 1)
    assert jobs["a"].timeout_at == deadline and jobs["a"].assigned_at == at(1)
    assert jobs["c"].status == "assigned" and jobs["c"].updated_at == at(1)
    assert (jobs["b"].status, jobs["b"].retry_count, jobs["b"].node_id) == ("pending", 1, None)
    assert jobs["b"].not_before == retry_at and jobs["b"].timeout_at is None
    assert (jobs["d"].status, jobs["d"].reason, jobs["d"].finished_at) == ("failed", "MaxRetriesExceeded", at(1))

    history = {(r.job_id, r.attempt): r for r in rows(store, attempts_t)}
    assert history[(1, 1)].status == "assigned" and history[(3, 1)].node_name == "w1"
    assert (history[(2, 1)].status, history[(2, 1)].finished_at) == ("requeued", at(1))
    assert history[(4, 1)].status == "failed"

    audit = rows(store, audit_t)
    # The audit rows keep the order of the decisions, whatever order the rows were written in.
    assert [r.entity_id for r in audit] == ["c", "d", "a", "b"]
    assert audit[0].details == {"from": "pending", "to": "assigned", "reason": "Scheduled",
                                "attempt": 1, "node": "w1"}
    assert audit[3].details["notBefore"] == retry_at.isoformat()
    assert all(r.created_at == at(1) for r in audit)


def test_one_stale_row_among_many_aborts_the_whole_batch(store: Store) -> None:
    seed(store, [{"id": i, "name": f"j{i}"} for i in range(1, 51)])
    with store.write() as session:  # someone else bound j37 meanwhile
        session.execute(sa.update(jobs_t).where(jobs_t.c.id == 37).values(status="assigned", attempt=1))
    transitions = [
        JobTransition(i, f"j{i}", JobStatus.PENDING, JobStatus.ASSIGNED, str(Reason.SCHEDULED), 0,
                      node_id=1, node_name="w1", timeout_at=at(61))
        for i in range(50, 0, -1)
    ]
    with pytest.raises(ConcurrentChange), store.write() as session:
        apply_job_transitions(session, transitions, at(1))
    assert [r.status for r in rows(store, jobs_t, jobs_t.c.id != 37)] == ["pending"] * 49
    assert rows(store, attempts_t) == [] and rows(store, audit_t) == []


def test_eligible_run_leaves_out_suspended_and_delayed_jobs_in_queue_order(store: Store) -> None:
    seed(store, [
        {"name": "old", "created_at": at(-30)},
        {"name": "suspended", "created_at": at(-20), "suspend": True},
        {"name": "waiting", "created_at": at(-10), "not_before": at(5)},
        {"name": "due", "created_at": at(-5), "not_before": at(0), "node_selector": {"gpu": "yes"},
         "parameters": {"seconds": 3}},
        {"name": "new", "created_at": at(0)},
        {"name": "other-class", "created_at": at(-40), "priority": Priority.HIGH.rank},
        {"name": "busy", "created_at": at(-50), "status": "running", "node_id": 1, "attempt": 1},
    ])
    with store.read() as session:
        run = list(passes.eligible_run(session, Priority.MEDIUM, at(0), batch=2))
        later = [j.name for j in passes.eligible_run(session, Priority.MEDIUM, at(5), batch=1)]
    assert [j.name for j in run] == ["old", "due", "new"]
    assert later == ["old", "waiting", "due", "new"]
    due = run[1]
    assert (due.node_selector, due.parameters, due.created_at) == ({"gpu": "yes"}, {"seconds": 3}, at(-5))


def test_schedulable_nodes_merge_declared_labels_over_reported(store: Store) -> None:
    seed(store, [], nodes=[
        {"name": "w1", "labels": {"zone": "a"}, "reported_labels": {"zone": "b", "gpu": "yes"}},
        {"name": "w2", "reported_labels": {"gpu": "no"}},
        {"name": "w3", "unschedulable": True},
        {"name": "w4", "status": "dead"},
    ])
    with store.write() as session:
        nodes = passes.schedulable_nodes(session, lock=True)
        only = passes.schedulable_nodes(session, only=2)
    assert [(n.name, n.labels) for n in nodes] == [("w1", {"zone": "a", "gpu": "yes"}), ("w2", {"gpu": "no"})]
    assert [n.name for n in only] == ["w2"]


def test_converter_writes_what_the_column_types_write() -> None:
    convert = Converter("sqlite")
    when = datetime(2026, 1, 1, 12, 0, 0, 5, tzinfo=UTC)
    assert convert.value(when) == "2026-01-01 12:00:00.000005"
    assert convert.value(when.astimezone(UTC).replace(tzinfo=UTC)) is convert.value(when)  # converted once
    details = {"message": "é \"quoted\"", "n": 1, "x": None, "list": [1.5, True]}
    assert convert.row([1, "a", None, details]) == (1, "a", None, json.dumps(details))
    with pytest.raises(ValueError, match="naive"):
        convert.value(datetime(2026, 1, 1))


def test_update_rows_counts_and_applies_every_entry_even_for_the_same_row(store: Store) -> None:
    seed(store, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    with store.write() as session:
        many = update_rows(session, jobs_t, ("id",), ("reason",), [("x", 1), ("y", 2)])
        twice = update_rows(session, jobs_t, ("id",), ("reason",), [("first", 1), ("second", 1)])
        none = update_rows(session, jobs_t, ("id", "status"), ("reason",), [("z", 1, "running"), ("z", 2, "x")])
    assert (many, twice, none) == (2, 2, 0)
    assert [r.reason for r in rows(store, jobs_t)] == ["second", "y"]
