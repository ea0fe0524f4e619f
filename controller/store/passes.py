"""Reads of the reconcile pass's hot steps, shaped for thousands of rows per pass.

Everything here runs inside the caller's session (and so its transaction). The
scheduler asks only for what it can bind: ineligible pending jobs (suspended, or
waiting out a retry delay) are filtered by the database, not read and skipped,
and JSON columns come back as text on SQLite and are decoded here, where the
common empty object costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import Session

from controller.domain.states import JobStatus, NodeStatus, Priority
from controller.store.prepared import Prepared, connection_of
from controller.store.queries import PendingJob
from controller.store.transitions import jobs_t, nodes_t

_EMPTY_OBJECT = "{}"


def json_value(value: Any) -> Any:
    """A JSON column read as text (SQLite) or already decoded by the driver (PostgreSQL)."""
    if type(value) is not str:
        return value
    if value == _EMPTY_OBJECT:
        return {}
    return json.loads(value)


def _raw_json(column: sa.Column[Any]) -> Any:
    # No result processor: the driver's value, decoded by `json_value`.
    return sa.type_coerce(column, sa.Text).label(column.name)


_ELIGIBLE_COLUMNS = (
    jobs_t.c.id,
    jobs_t.c.name,
    jobs_t.c.created_at,
    jobs_t.c.attempt,
    jobs_t.c.scenario_name,
    _raw_json(jobs_t.c.parameters),
    _raw_json(jobs_t.c.node_selector),
    jobs_t.c.reason,
)


def _eligible_statement(dialect: str, after: bool, lock: bool, batch: int) -> sa.Select[Any]:
    pending = str(JobStatus.PENDING)
    now = sa.bindparam("now", type_=jobs_t.c.not_before.type)
    statement = (
        sa.select(*_ELIGIBLE_COLUMNS)
        # A literal, as in the partial queue index's WHERE clause (see queries.IS_PENDING).
        .where(sa.text(f"jobs.status = '{pending}'"), jobs_t.c.priority == sa.bindparam("rank"))
        .where(jobs_t.c.suspend.is_(False),
               sa.or_(jobs_t.c.not_before.is_(None), jobs_t.c.not_before <= now))
        .order_by(jobs_t.c.created_at, jobs_t.c.name)
        .limit(sa.literal_column(str(int(batch)))).offset(sa.literal_column("0"))
    )
    if after:
        statement = statement.where(sa.tuple_(jobs_t.c.created_at, jobs_t.c.name) > sa.tuple_(
            sa.bindparam("after_created", type_=jobs_t.c.created_at.type),
            sa.bindparam("after_name", type_=jobs_t.c.name.type),
        ))
    if lock and dialect == "postgresql":
        statement = statement.with_for_update(skip_locked=True, key_share=True)
    return statement


@lru_cache(maxsize=128)
def _eligible(after: bool, lock: bool, batch: int) -> Prepared:
    # The batch is a literal (SQLite compiles a bound LIMIT with an OFFSET): a few sizes
    # in practice, the pass's and the heartbeat path's (a small multiple of a node's slots).
    return Prepared(lambda dialect: _eligible_statement(dialect, after, lock, batch))


def eligible_run(
    session: Session, priority: Priority, now: datetime, batch: int = 500, lock: bool = False
) -> Generator[PendingJob]:
    """Pending jobs of one class that may start at `now`, in `createdAt, name` order.

    Eligible: not suspended and past any `notBefore`. Read lazily in keyset batches
    along the queue index; with `lock`, the rows are locked (SKIP LOCKED) on PostgreSQL.
    """
    connection = connection_of(session)
    rank = priority.rank
    rows = _eligible(False, lock, batch).rows(connection, rank=rank, now=now)
    while True:
        for job_id, name, created_at, attempt, scenario, parameters, selector, reason in rows:
            yield PendingJob(name, priority, created_at, job_id, attempt, scenario,
                             json_value(parameters), json_value(selector), reason)
        if len(rows) < batch:
            return
        last = rows[-1]
        rows = _eligible(True, lock, batch).rows(connection, rank=rank, now=now,
                                                 after_created=last.created_at, after_name=last.name)


class SchedulableNode(NamedTuple):
    """A ready, schedulable node as placement sees it (labels: declared over reported)."""

    id: int
    name: str
    slots: int
    labels: dict[str, Any]


@lru_cache(maxsize=8)
def _schedulable(only: bool, lock: bool, skip_locked: bool) -> Prepared:
    def build(dialect: str) -> sa.Select[Any]:
        statement = (
            sa.select(nodes_t.c.id, nodes_t.c.name, nodes_t.c.slots,
                      _raw_json(nodes_t.c.labels), _raw_json(nodes_t.c.reported_labels))
            .where(nodes_t.c.status == str(NodeStatus.READY), nodes_t.c.unschedulable.is_(False),
                   nodes_t.c.draining.is_(False))
            .order_by(nodes_t.c.id)
        )
        if only:
            statement = statement.where(nodes_t.c.id == sa.bindparam("only"))
        if lock and dialect == "postgresql":
            statement = statement.with_for_update(of=nodes_t, skip_locked=skip_locked, key_share=True)
        return statement

    return Prepared(build)


def schedulable_nodes(
    session: Session, only: int | None = None, lock: bool = False, skip_locked: bool = False
) -> list[SchedulableNode]:
    """Ready, schedulable (not cordoned, not draining) nodes (or just `only`), locked FOR NO KEY UPDATE
    on PostgreSQL when asked.

    Only the columns placement uses. Every binding to a node happens under that node's
    row lock, after counting its active jobs, so two schedulers (the pass of the leader,
    the heartbeat path of any replica) never overbook a node. With `skip_locked`, nodes
    another transaction holds (a heartbeat filling its own node) are left out instead
    of waited for.
    """
    statement = _schedulable(only is not None, lock, skip_locked)
    values = {"only": only} if only is not None else {}
    nodes = []
    for node_id, name, slots, declared, reported in statement.tuples(connection_of(session), **values):
        labels = json_value(reported) or {}
        declared_labels = json_value(declared)
        if declared_labels:
            labels = {**labels, **declared_labels}
        nodes.append(SchedulableNode(node_id, name, slots, labels))
    return nodes
