"""The one door: every job and node status change passes through here.

A transition is checked against the state machine, written with a guard on the
status and attempt the caller observed (so a concurrent change makes the whole
transaction fail instead of silently overwriting it), reflected in the attempt
history, and audited, all inside the caller's transaction. Nothing else in the
code base assigns a status.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from controller.domain.states import (
    ACTIVE_JOB_STATUSES,
    JobStatus,
    NodeStatus,
    Reason,
    check_job_transition,
    check_node_transition,
)
from controller.store.audit import write_audit_many
from controller.store.bulk import executemany, insert_many
from controller.store.models import Job, JobAttempt, Node

jobs_t: sa.Table = Job.__table__  # type: ignore[attr-defined]
attempts_t: sa.Table = JobAttempt.__table__  # type: ignore[attr-defined]
nodes_t: sa.Table = Node.__table__  # type: ignore[attr-defined]


class ConcurrentChange(RuntimeError):
    """A row was changed by someone else between being read and being written."""


@dataclass(frozen=True, slots=True)
class JobTransition:
    """One job status change, with the values it observed (for the guard) and sets."""

    job_id: int
    name: str
    from_status: JobStatus
    to_status: JobStatus
    reason: str
    attempt: int
    """The attempt the caller saw; the row must still carry it. `-> assigned` makes it +1."""
    message: str | None = None
    node_id: int | None = None
    """For `-> assigned`: the node the job is bound to."""
    node_name: str | None = None
    """The node the transition concerns, for the audit row and the attempt history."""
    retry_count: int | None = None
    """New retry count, when it changes."""
    not_before: datetime | None = None
    timeout_at: datetime | None = None
    exit_code: int | None = None
    log_tail: str | None = None
    result: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NodeTransition:
    """One node status change."""

    node_id: int
    name: str
    from_status: NodeStatus
    to_status: NodeStatus
    reason: str


def _job_values(t: JobTransition, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": str(t.to_status),
        "reason": t.reason,
        "message": t.message,
        "updated_at": now,
    }
    to, source = t.to_status, t.from_status
    if to is JobStatus.ASSIGNED:
        # started_at/finished_at are already empty: every way into pending clears them.
        values.update(
            node_id=t.node_id,
            attempt=t.attempt + 1,
            assigned_at=now,
            timeout_at=t.timeout_at,
            not_before=None,
        )
    elif to is JobStatus.RUNNING:
        values.update(started_at=now, timeout_at=t.timeout_at)
    elif to is JobStatus.PENDING:
        values.update(
            node_id=None,
            not_before=t.not_before,
            timeout_at=None,
            assigned_at=None,
            started_at=None,
            finished_at=None,
        )
        if source.terminal:  # manual retry
            values["retry_count"] = 0
    else:  # completed, failed, cancelled
        values.update(finished_at=now, timeout_at=None, not_before=None)
    if t.retry_count is not None and "retry_count" not in values:
        values["retry_count"] = t.retry_count
    return values


def _attempt_values(t: JobTransition, now: datetime) -> dict[str, Any] | None:
    """How the current attempt's history row changes (None: the job had no attempt running)."""
    if t.from_status not in ACTIVE_JOB_STATUSES:
        return None
    if t.to_status is JobStatus.RUNNING:
        return {"status": "running", "started_at": now}
    outcome = "requeued" if t.to_status is JobStatus.PENDING else str(t.to_status)
    return {
        "status": outcome,
        "reason": t.reason,
        "message": t.message,
        "finished_at": now,
        "exit_code": t.exit_code,
        "log_tail": t.log_tail,
        "result": t.result,
    }


def _grouped(
    rows: Iterable[tuple[dict[str, Any], dict[str, Any]]],
) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Group (values, where) pairs by the columns they set, so each group is one executemany."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for values, where in rows:
        key = tuple(sorted(values))
        params = {f"v_{k}": v for k, v in values.items()}
        params.update({f"w_{k}": v for k, v in where.items()})
        groups[key].append(params)
    return groups


def _execute_guarded(
    session: Session, statement: Any, params: list[dict[str, Any]], what: str
) -> None:
    """Run an UPDATE for every params set and insist that each matched exactly one row."""
    connection = session.connection()
    if connection.dialect.supports_sane_multi_rowcount:
        changed = executemany(session, statement, params)
        if changed != len(params):
            raise ConcurrentChange(f"{what}: {len(params) - changed} rows changed concurrently")
        return
    for one in params:
        if executemany(session, statement, [one]) != 1:
            raise ConcurrentChange(f"{what}: row changed concurrently ({one})")


def apply_job_transitions(
    session: Session,
    transitions: Sequence[JobTransition],
    now: datetime,
    client_id: str | None = None,
) -> None:
    """Write job transitions, their attempt history and their audit rows in the caller's transaction."""
    if not transitions:
        return
    for t in transitions:
        check_job_transition(t.from_status, t.to_status)

    job_rows = (
        (_job_values(t, now), {"id": t.job_id, "status": str(t.from_status), "attempt": t.attempt})
        for t in transitions
    )
    for columns, params in _grouped(job_rows).items():
        statement = (
            sa.update(jobs_t)
            .where(
                jobs_t.c.id == sa.bindparam("w_id"),
                jobs_t.c.status == sa.bindparam("w_status"),
                jobs_t.c.attempt == sa.bindparam("w_attempt"),
            )
            .values({c: sa.bindparam(f"v_{c}") for c in columns})
        )
        _execute_guarded(session, statement, params, "job transition")

    new_attempts = [
        {
            "job_id": t.job_id,
            "attempt": t.attempt + 1,
            "node_name": t.node_name or "",
            "status": "assigned",
            "assigned_at": now,
        }
        for t in transitions
        if t.to_status is JobStatus.ASSIGNED
    ]
    insert_many(session, attempts_t, new_attempts)

    attempt_rows = []
    for t in transitions:
        values = _attempt_values(t, now)
        if values is not None:
            attempt_rows.append((values, {"job_id": t.job_id, "attempt": t.attempt}))
    for columns, params in _grouped(attempt_rows).items():
        statement = (
            sa.update(attempts_t)
            .where(
                attempts_t.c.job_id == sa.bindparam("w_job_id"),
                attempts_t.c.attempt == sa.bindparam("w_attempt"),
            )
            .values({c: sa.bindparam(f"v_{c}") for c in columns})
        )
        # Unguarded: history is a record, and a missing row must never block a requeue.
        executemany(session, statement, params)

    write_audit_many(session, [_job_audit(t, now, client_id) for t in transitions])


def _job_audit(t: JobTransition, now: datetime, client_id: str | None) -> dict[str, Any]:
    attempt = t.attempt + 1 if t.to_status is JobStatus.ASSIGNED else t.attempt
    details: dict[str, Any] = {
        "from": str(t.from_status),
        "to": str(t.to_status),
        "reason": t.reason,
        "attempt": attempt,
        "node": t.node_name,
    }
    if t.retry_count is not None:
        details["retryCount"] = t.retry_count
    if t.message:
        details["message"] = t.message
    if t.exit_code is not None:
        details["exitCode"] = t.exit_code
    if t.not_before is not None:
        details["notBefore"] = t.not_before.isoformat()
    return {
        "event_type": "job.transition",
        "entity_type": "job",
        "entity_id": t.name,
        "client_id": client_id,
        "details": details,
        "created_at": now,
    }


def apply_node_transitions(
    session: Session,
    transitions: Sequence[NodeTransition],
    now: datetime,
    client_id: str | None = None,
) -> None:
    """Write node status changes and their audit rows in the caller's transaction."""
    if not transitions:
        return
    for t in transitions:
        check_node_transition(t.from_status, t.to_status)
    statement = (
        sa.update(nodes_t)
        .where(nodes_t.c.id == sa.bindparam("w_id"), nodes_t.c.status == sa.bindparam("w_status"))
        .values(
            status=sa.bindparam("v_status"),
            status_changed_at=sa.bindparam("v_changed"),
            updated_at=sa.bindparam("v_changed"),
        )
    )
    params = [
        {"w_id": t.node_id, "w_status": str(t.from_status), "v_status": str(t.to_status),
         "v_changed": now}
        for t in transitions
    ]
    _execute_guarded(session, statement, params, "node transition")
    write_audit_many(
        session,
        [
            {
                "event_type": "node.transition",
                "entity_type": "node",
                "entity_id": t.name,
                "client_id": client_id,
                "details": {"from": str(t.from_status), "to": str(t.to_status), "reason": t.reason},
                "created_at": now,
            }
            for t in transitions
        ],
    )


__all__ = [
    "ConcurrentChange",
    "JobTransition",
    "NodeTransition",
    "Reason",
    "apply_job_transitions",
    "apply_node_transitions",
]
