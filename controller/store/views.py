"""Read models: jobs, nodes, attempts, audit entries and queue statistics as the API shows them.

The JSON shape is flat with camelCase names (SPEC section 8); the Python objects
keep snake_case attributes for library users and the test harness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from controller.config import ControllerConfig
from controller.domain.states import JobStatus, Priority
from controller.store.models import AuditLog
from controller.store.prepared import Prepared, connection_of
from controller.store.queries import IS_PENDING, active_counts
from controller.store.transitions import attempts_t, jobs_t, nodes_t

audit_t: sa.Table = AuditLog.__table__  # type: ignore[attr-defined]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def to_json(obj: Any) -> dict[str, Any]:
    """A view dataclass as flat camelCase JSON (times in ISO 8601 UTC)."""
    out: dict[str, Any] = {}
    for key in obj.__dataclass_fields__:
        value = getattr(obj, key)
        if isinstance(value, datetime):
            value = _iso(value)
        elif isinstance(value, list) and value and hasattr(value[0], "__dataclass_fields__"):
            value = [to_json(v) for v in value]
        out[_camel(key)] = value
    return out


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One attempt of a job."""

    attempt: int
    node: str
    status: str
    reason: str | None
    exit_code: int | None
    message: str | None
    assigned_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the API shows it."""

    name: str
    scenario: str
    parameters: dict[str, Any]
    priority: str
    status: str
    reason: str | None
    message: str | None
    node: str | None
    attempt: int
    retry_count: int
    max_retries: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    not_before: datetime | None
    source: str
    source_path: str | None
    labels: dict[str, str]
    suspend: bool
    node_selector: dict[str, str]
    expected_duration_seconds: float | None
    active_deadline_seconds: float | None
    fail_on_exit_codes: list[int]
    assigned_at: datetime | None
    updated_at: datetime
    attempts: list[AttemptView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as the API shows it."""

    name: str
    status: str
    slots: int
    running: int
    labels: dict[str, str]
    unschedulable: bool
    draining: bool
    declared: bool
    last_heartbeat: datetime | None
    status_changed_at: datetime
    source: str
    source_path: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row."""

    id: int
    event_type: str
    entity_type: str
    entity_id: str
    client_id: str | None
    details: dict[str, Any]
    created_at: datetime


_JOB_COLUMNS = [c for c in jobs_t.c if c.name not in ("node_id",)]


def _job_select() -> sa.Select[Any]:
    return sa.select(*_JOB_COLUMNS, nodes_t.c.name.label("node_name")).select_from(
        jobs_t.outerjoin(nodes_t, nodes_t.c.id == jobs_t.c.node_id)
    )


def _job_view(row: Any, config: ControllerConfig, attempts: list[AttemptView] | None = None) -> JobView:
    return JobView(
        name=row.name,
        scenario=row.scenario_name,
        parameters=row.parameters,
        priority=str(Priority.from_rank(row.priority)),
        status=row.status,
        reason=row.reason,
        message=row.message,
        node=row.node_name,
        attempt=row.attempt,
        retry_count=row.retry_count,
        max_retries=row.max_retries if row.max_retries is not None else config.fault_tolerance.max_retries,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        not_before=row.not_before,
        source=row.source,
        source_path=row.source_path,
        labels=row.labels,
        suspend=row.suspend,
        node_selector=row.node_selector,
        expected_duration_seconds=row.expected_duration_seconds,
        active_deadline_seconds=row.active_deadline_seconds,
        fail_on_exit_codes=row.fail_on_exit_codes,
        assigned_at=row.assigned_at,
        updated_at=row.updated_at,
        attempts=attempts or [],
    )


def get_job(
    session: Session, name: str, config: ControllerConfig, with_attempts: bool = True
) -> JobView | None:
    """One job by name, with its attempts."""
    row = _JOB_BY_NAME.first(session.connection(), name=name)
    if row is None:
        return None
    attempts = job_attempts(session, row.id) if with_attempts else []
    return _job_view(row, config, attempts)


# Read on every `GET /jobs/{name}` and after every submission: prepared once.
_JOB_BY_NAME = Prepared(lambda _: _job_select().where(jobs_t.c.name == sa.bindparam("name")))
_ATTEMPTS = Prepared(lambda _: sa.select(attempts_t).where(attempts_t.c.job_id == sa.bindparam("job_id"))
                     .order_by(attempts_t.c.attempt))


def job_attempts(session: Session, job_id: int) -> list[AttemptView]:
    """Every attempt of a job, oldest first."""
    rows = _ATTEMPTS.rows(session.connection(), job_id=job_id)
    return [
        AttemptView(r.attempt, r.node_name, r.status, r.reason, r.exit_code, r.message,
                    r.assigned_at, r.started_at, r.finished_at)
        for r in rows
    ]


def attempt_logs(session: Session, name: str) -> list[dict[str, Any]] | None:
    """The output tail of every attempt of a job (None: no such job)."""
    job_id = session.execute(sa.select(jobs_t.c.id).where(jobs_t.c.name == name)).scalar()
    if job_id is None:
        return None
    rows = session.execute(
        sa.select(attempts_t.c.attempt, attempts_t.c.node_name, attempts_t.c.status,
                  attempts_t.c.log_tail)
        .where(attempts_t.c.job_id == job_id)
        .order_by(attempts_t.c.attempt)
    )
    return [{"attempt": r.attempt, "node": r.node_name, "status": r.status, "logTail": r.log_tail}
            for r in rows]


def list_jobs(
    session: Session,
    config: ControllerConfig,
    status: str | None = None,
    priority: str | None = None,
    node: str | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> tuple[list[JobView], int | None]:
    """A page of jobs (by id), and the id to continue after (None at the end)."""
    statement = _job_select().order_by(jobs_t.c.id).limit(limit + 1)
    if status is not None:
        statement = statement.where(jobs_t.c.status == status)
    if priority is not None:
        statement = statement.where(jobs_t.c.priority == Priority(priority).rank)
    if node is not None:
        statement = statement.where(nodes_t.c.name == node)
    if after_id is not None:
        statement = statement.where(jobs_t.c.id > after_id)
    rows = session.execute(statement).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return [_job_view(r, config) for r in rows], (rows[-1].id if more else None)


def _node_view(row: Any, running: int) -> NodeView:
    labels = dict(row.reported_labels or {})
    labels.update(row.labels or {})
    return NodeView(
        name=row.name,
        status=row.status,
        slots=row.slots,
        running=running,
        labels=labels,
        unschedulable=row.unschedulable,
        draining=row.draining,
        declared=row.declared,
        last_heartbeat=row.last_heartbeat,
        status_changed_at=row.status_changed_at,
        source=row.source,
        source_path=row.source_path,
        created_at=row.created_at,
    )


def get_node(session: Session, name: str) -> NodeView | None:
    """One node by name."""
    row = session.execute(sa.select(nodes_t).where(nodes_t.c.name == name)).first()
    if row is None:
        return None
    return _node_view(row, active_counts(session, [row.id]).get(row.id, 0))


def list_nodes(
    session: Session, status: str | None = None, limit: int = 100, after_id: int | None = None
) -> tuple[list[NodeView], int | None]:
    """A page of nodes (by id), and the id to continue after."""
    statement = sa.select(nodes_t).order_by(nodes_t.c.id).limit(limit + 1)
    if status is not None:
        statement = statement.where(nodes_t.c.status == status)
    if after_id is not None:
        statement = statement.where(nodes_t.c.id > after_id)
    rows = session.execute(statement).all()
    more = len(rows) > limit
    rows = rows[:limit]
    counts = active_counts(session, [r.id for r in rows]) if rows else {}
    return [_node_view(r, counts.get(r.id, 0)) for r in rows], (rows[-1].id if more else None)


def list_audit(
    session: Session,
    entity_type: str | None = None,
    entity_id: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> tuple[list[AuditEntry], int | None]:
    """A page of audit entries, oldest first, and the id to continue after."""
    statement = sa.select(audit_t).order_by(audit_t.c.id).limit(limit + 1)
    if entity_type is not None:
        statement = statement.where(audit_t.c.entity_type == entity_type)
    if entity_id is not None:
        statement = statement.where(audit_t.c.entity_id == entity_id)
    if event_type is not None:
        statement = statement.where(audit_t.c.event_type == event_type)
    if since is not None:
        statement = statement.where(audit_t.c.created_at >= since)
    if after_id is not None:
        statement = statement.where(audit_t.c.id > after_id)
    rows = session.execute(statement).all()
    more = len(rows) > limit
    rows = rows[:limit]
    entries = [
        AuditEntry(r.id, r.event_type, r.entity_type, r.entity_id, r.client_id, r.details, r.created_at)
        for r in rows
    ]
    return entries, (rows[-1].id if more else None)


def pending_by_priority(session: Session) -> dict[str, int]:
    """Pending jobs per class, read from the queue's partial index (cheap at any size)."""
    counts = dict.fromkeys((str(p) for p in Priority), 0)
    for rank, count in _PENDING_BY_RANK.tuples(connection_of(session)):
        counts[str(Priority.from_rank(rank))] = count
    return counts


# After every pass (the queue gauges): prepared once.
_PENDING_BY_RANK = Prepared(lambda _: sa.select(jobs_t.c.priority, sa.func.count()).where(IS_PENDING)
                            .group_by(jobs_t.c.priority))


def queue_stats(session: Session) -> dict[str, Any]:
    """Totals by status and pending jobs by class (the `GET /queue/stats` shape)."""
    by_status = dict.fromkeys((str(s) for s in JobStatus), 0)
    for row in session.execute(sa.select(jobs_t.c.status, sa.func.count()).group_by(jobs_t.c.status)):
        by_status[row[0]] = row[1]
    by_priority = pending_by_priority(session)
    out: dict[str, Any] = {f"total{s.title()}": by_status[s] for s in (str(x) for x in JobStatus)}
    out["byPriority"] = by_priority
    return out
