"""Named reads and small writes of the reconcile pass and the worker protocol.

Everything here runs inside the caller's session (and so its transaction).
Status changes are not made here: they go through `controller.store.transitions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import Session

from controller.domain.states import JobStatus, NodeStatus, Priority
from controller.store.models import Scenario
from controller.store.prepared import Prepared, connection_of
from controller.store.transitions import attempts_t, jobs_t, nodes_t

scenarios_t: sa.Table = Scenario.__table__  # type: ignore[attr-defined]

ACTIVE = (str(JobStatus.ASSIGNED), str(JobStatus.RUNNING))

# Written as literals, exactly as in the partial indexes' WHERE clauses: SQLite (and a
# PostgreSQL generic plan) can only use a partial index when the query's condition
# implies the index's, which a bound parameter never does.
IS_PENDING = sa.text("jobs.status = 'pending'")
IS_ACTIVE = sa.text("jobs.status IN ('assigned', 'running')")
# LIMIT 1 OFFSET 0 of prepared statements as literals (a prepared statement binds only named
# values, and SQLite's compiler adds a bound OFFSET to a LIMIT without one).
_ONE: sa.ColumnClause[Any] = sa.literal_column("1")
_NONE: sa.ColumnClause[Any] = sa.literal_column("0")


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """An assigned or running job, as the fault-tolerance steps see it."""

    id: int
    name: str
    status: JobStatus
    attempt: int
    retry_count: int
    max_retries: int | None
    node_id: int | None
    node_name: str | None
    timeout_at: datetime | None


class PendingJob(NamedTuple):
    """A pending job, as the scheduler sees it (a `QueueEntry`).

    A named tuple: a scheduling pass reads thousands, and a frozen dataclass takes
    four times as long to build.
    """

    name: str
    priority: Priority
    created_at: datetime
    id: int
    attempt: int
    scenario_name: str
    parameters: dict[str, Any]
    node_selector: dict[str, str]
    reason: str | None
    """Why it waits, as last recorded (the pass rewrites it only when it changes)."""


@dataclass(frozen=True, slots=True)
class ScenarioInfo:
    """What scheduling needs of a scenario."""

    name: str
    command: list[str]
    defaults: dict[str, Any]
    requires: dict[str, str]
    expected_duration_seconds: float | None


def _active_columns() -> list[Any]:
    return [
        jobs_t.c.id,
        jobs_t.c.name,
        jobs_t.c.status,
        jobs_t.c.attempt,
        jobs_t.c.retry_count,
        jobs_t.c.max_retries,
        jobs_t.c.node_id,
        nodes_t.c.name.label("node_name"),
        jobs_t.c.timeout_at,
    ]


def _active(row: Any) -> ActiveJob:
    return ActiveJob(
        id=row.id,
        name=row.name,
        status=JobStatus(row.status),
        attempt=row.attempt,
        retry_count=row.retry_count,
        max_retries=row.max_retries,
        node_id=row.node_id,
        node_name=row.node_name,
        timeout_at=row.timeout_at,
    )


def silent_ready_nodes(session: Session, cutoff: datetime) -> list[tuple[int, str, datetime | None]]:
    """(id, name, last_heartbeat) of ready nodes not heard from since `cutoff` (index range scan).

    A ready node always has a heartbeat: the heartbeat that made it ready wrote it.
    """
    return [(r.id, r.name, r.last_heartbeat) for r in _SILENT.rows(connection_of(session), cutoff=cutoff)]


def count_ready_nodes(session: Session) -> int:
    """How many nodes are ready."""
    return int(
        session.execute(
            sa.select(sa.func.count()).select_from(nodes_t).where(nodes_t.c.status == str(NodeStatus.READY))
        ).scalar_one()
    )


_ANY_PENDING = Prepared(lambda _: sa.select(jobs_t.c.id).where(IS_PENDING).limit(_ONE).offset(_NONE))


def any_pending(session: Session) -> bool:
    """True when at least one job is pending (a probe of the queue index)."""
    return _ANY_PENDING.first(connection_of(session)) is not None


# One EXISTS probe of the queue index per class, in one statement (ranks as literals: the
# partial index serves each probe as a seek).
_PENDING_RANKS = Prepared(lambda _: sa.union_all(*(
    sa.select(sa.literal_column(str(p.rank)).label("rank")).where(sa.exists(
        sa.select(jobs_t.c.id).where(IS_PENDING, jobs_t.c.priority == sa.literal_column(str(p.rank)))))
    for p in Priority
)))


def pending_priorities(session: Session) -> list[Priority]:
    """The priority classes that hold at least one pending job, highest first."""
    ranks = {rank for (rank,) in _PENDING_RANKS.tuples(connection_of(session))}
    return [p for p in Priority if p.rank in ranks]


def jobs_on_lost_nodes(session: Session) -> list[ActiveJob]:
    """Assigned or running jobs whose node is dead or gone.

    Driven from the dead nodes (few) into `idx_jobs_node_status`, so the cost does
    not grow with the number of running jobs.
    """
    connection = connection_of(session)
    rows = [*_ON_DEAD_NODES.rows(connection), *_ORPHANS.rows(connection)]
    return sorted((_active(r) for r in rows), key=lambda j: j.id)


def timed_out_jobs(session: Session, now: datetime) -> list[ActiveJob]:
    """Assigned or running jobs strictly past their timeout (assign timeout or stall limit)."""
    return [_active(r) for r in _TIMED_OUT.rows(connection_of(session), now=now)]


# The pass's reads, prepared: every pass runs them, mostly to find nothing (a pass
# follows every burst of changes), and building them costs more than running them.
_SILENT = Prepared(lambda _: sa.select(nodes_t.c.id, nodes_t.c.name, nodes_t.c.last_heartbeat).where(
    sa.text(f"nodes.status = '{NodeStatus.READY}'"),
    nodes_t.c.last_heartbeat < sa.bindparam("cutoff", type_=nodes_t.c.last_heartbeat.type)))
# The active statuses as parameters here, not literals: told the values, SQLite's planner
# reads every active job through `idx_jobs_status` (19,000 of them in the benchmark's
# database, 9-16 ms) instead of going from the dead nodes (none, mostly) into
# `idx_jobs_node_status`.
_ACTIVE_BOUND: list[sa.BindParameter[str]] = [
    sa.bindparam(f"active_{i}", status) for i, status in enumerate(ACTIVE)]
_ON_DEAD_NODES = Prepared(lambda _: (
    sa.select(*_active_columns())
    .select_from(nodes_t.join(jobs_t, jobs_t.c.node_id == nodes_t.c.id))
    .where(nodes_t.c.status == sa.bindparam("dead", str(NodeStatus.DEAD)),
           jobs_t.c.status.in_(_ACTIVE_BOUND))
))
_ORPHANS = Prepared(lambda _: (
    sa.select(*_active_columns())
    .select_from(jobs_t.outerjoin(nodes_t, nodes_t.c.id == jobs_t.c.node_id))
    .where(jobs_t.c.node_id.is_(None), jobs_t.c.status.in_(_ACTIVE_BOUND))
))
_TIMED_OUT = Prepared(lambda _: (
    sa.select(*_active_columns())
    .select_from(jobs_t.outerjoin(nodes_t, nodes_t.c.id == jobs_t.c.node_id))
    .where(IS_ACTIVE, jobs_t.c.timeout_at < sa.bindparam("now", type_=jobs_t.c.timeout_at.type))
    .order_by(jobs_t.c.id)
))


# The heartbeat path's statements, prepared (see `controller.store.prepared`): a heartbeat
# that hands out work runs a dozen of them, and SQLAlchemy's statement building and
# result processing cost several times what SQLite needs to run them.
_NODE_HAS_ACTIVE = Prepared(lambda _: (
    sa.select(jobs_t.c.id).where(jobs_t.c.node_id == sa.bindparam("node_id"), IS_ACTIVE)
    .limit(_ONE).offset(_NONE)
))
_ACTIVE_ON_NODE = Prepared(lambda _: (
    sa.select(*_active_columns())
    .select_from(jobs_t.join(nodes_t, nodes_t.c.id == jobs_t.c.node_id))
    .where(jobs_t.c.node_id == sa.bindparam("node_id"), IS_ACTIVE)
    .order_by(jobs_t.c.id)
))


def node_has_active_jobs(session: Session, node_id: int) -> bool:
    """True when some job is assigned to or running on the node (a probe of `idx_jobs_node_status`)."""
    return _NODE_HAS_ACTIVE.first(connection_of(session), node_id=node_id) is not None


def active_jobs_on_node(session: Session, node_id: int) -> list[ActiveJob]:
    """Assigned and running jobs bound to one node."""
    return [_active(r) for r in _ACTIVE_ON_NODE.rows(connection_of(session), node_id=node_id)]


def _scenario_columns() -> sa.Select[Any]:
    return sa.select(
        scenarios_t.c.name,
        scenarios_t.c.command,
        scenarios_t.c.defaults,
        scenarios_t.c.requires,
        scenarios_t.c.expected_duration_seconds,
    )


_SCENARIO = Prepared(lambda _: _scenario_columns().where(scenarios_t.c.name == sa.bindparam("name")))
_SCENARIOS = Prepared(lambda _: _scenario_columns())


def scenarios_by_name(session: Session, names: Sequence[str] | None = None) -> dict[str, ScenarioInfo]:
    """Scenarios by name (all of them, or the given names)."""
    connection = connection_of(session)
    if names is None:
        rows = _SCENARIOS.rows(connection)
    elif len(names) == 1:  # a heartbeat's assignments: usually of one scenario
        rows = _SCENARIO.rows(connection, name=names[0])
    else:
        rows = list(session.execute(_scenario_columns().where(scenarios_t.c.name.in_(list(names)))))
    return {r.name: ScenarioInfo(r.name, r.command, r.defaults, r.requires, r.expected_duration_seconds)
            for r in rows}


def count_schedulable_nodes(session: Session) -> int:
    """How many nodes are ready and schedulable (not cordoned, not draining)."""
    return int(session.execute(
        sa.select(sa.func.count()).select_from(nodes_t)
        .where(nodes_t.c.status == str(NodeStatus.READY), nodes_t.c.unschedulable.is_(False),
               nodes_t.c.draining.is_(False))
    ).scalar_one())


_ACTIVE_COUNTS = Prepared(lambda _: (
    sa.select(jobs_t.c.node_id, sa.func.count())
    .where(IS_ACTIVE, jobs_t.c.node_id.is_not(None))
    .group_by(jobs_t.c.node_id)
))
_ACTIVE_COUNT = Prepared(lambda _: (
    sa.select(jobs_t.c.node_id, sa.func.count())
    .where(IS_ACTIVE, jobs_t.c.node_id == sa.bindparam("node_id"))
    .group_by(jobs_t.c.node_id)
))


def active_counts(session: Session, node_ids: Sequence[int] | None = None) -> dict[int, int]:
    """Assigned plus running jobs per node id (of the given nodes, or of every node).

    The statuses are literals: with bound parameters SQLite cannot tell that few jobs
    are active, and counts by scanning all of `idx_jobs_node_status` (every job ever
    bound to a node: 1M entries, 0.1 to 0.3 s) instead of looking up the active ones.
    Every node's count (the pass: 10,000 rows) is read on the driver's cursor, where
    SQLAlchemy's result rows cost four times the query.
    """
    if node_ids is None:
        return dict(_ACTIVE_COUNTS.tuples(connection_of(session)))
    if len(node_ids) == 1:  # the heartbeat path
        return dict(_ACTIVE_COUNT.tuples(connection_of(session), node_id=node_ids[0]))
    statement = (
        sa.select(jobs_t.c.node_id, sa.func.count())
        .where(IS_ACTIVE, jobs_t.c.node_id.is_not(None), jobs_t.c.node_id.in_(list(node_ids)))
        .group_by(jobs_t.c.node_id)
    )
    return {node_id: count for node_id, count in session.execute(statement).all()}


def set_job_reasons(
    session: Session, changes: Sequence[tuple[int, str | None, str | None]], now: datetime
) -> None:
    """Set (id, reason, message) of pending jobs that are waiting (no status change)."""
    if not changes:
        return
    session.execute(
        sa.update(jobs_t)
        .where(jobs_t.c.id == sa.bindparam("w_id"), jobs_t.c.status == str(JobStatus.PENDING))
        .values(reason=sa.bindparam("v_reason"), message=sa.bindparam("v_message"), updated_at=now),
        [{"w_id": i, "v_reason": r, "v_message": m} for i, r, m in changes],
    )


def attempt_row(session: Session, job_id: int, attempt: int) -> Any:
    """The history row of one attempt, or None."""
    return _ATTEMPT_ROW.first(connection_of(session), job_id=job_id, attempt=attempt)


_ATTEMPT_ROW = Prepared(lambda _: sa.select(attempts_t).where(
    attempts_t.c.job_id == sa.bindparam("job_id"), attempts_t.c.attempt == sa.bindparam("attempt")))


def _by_name(table: sa.Table, lock: bool) -> Prepared:
    def build(dialect: str) -> sa.Select[Any]:
        statement = sa.select(table).where(table.c.name == sa.bindparam("name"))
        return statement.with_for_update(key_share=True) if lock and dialect == "postgresql" else statement
    return Prepared(build)


_NODE_BY_NAME = {lock: _by_name(nodes_t, lock) for lock in (False, True)}
_JOB_BY_NAME = {lock: _by_name(jobs_t, lock) for lock in (False, True)}


def node_by_name(session: Session, name: str, lock: bool = False) -> Any:
    """The node row called `name`, or None (locked FOR NO KEY UPDATE on PostgreSQL when asked)."""
    return _NODE_BY_NAME[lock].first(connection_of(session), name=name)


def _job_with_node(lock: bool) -> Prepared:
    def build(dialect: str) -> sa.Select[Any]:
        statement = (
            sa.select(jobs_t, nodes_t.c.name.label("node_name"))
            .select_from(jobs_t.outerjoin(nodes_t, nodes_t.c.id == jobs_t.c.node_id))
            .where(jobs_t.c.name == sa.bindparam("name"))
        )
        if lock and dialect == "postgresql":  # the job's row only (the node is the outer side)
            statement = statement.with_for_update(of=jobs_t, key_share=True)
        return statement
    return Prepared(build)


_JOB_WITH_NODE = {lock: _job_with_node(lock) for lock in (False, True)}


def insert_node_unless_taken(session: Session, **values: Any) -> bool:
    """Insert a node row; False when another transaction took its name first.

    The insert runs under a savepoint of its own, so the caller's transaction goes on
    either way (PostgreSQL makes the insert wait for the other's commit, then refuses
    it; the next statement reads what has committed since).
    """
    cursor = connection_of(session).connection.cursor()
    try:
        cursor.execute("SAVEPOINT ffrtmp_insert_node")
        try:
            session.execute(sa.insert(nodes_t).values(**values))
        except sa.exc.IntegrityError:
            cursor.execute("ROLLBACK TO SAVEPOINT ffrtmp_insert_node")
            cursor.execute("RELEASE SAVEPOINT ffrtmp_insert_node")
            return False
        cursor.execute("RELEASE SAVEPOINT ffrtmp_insert_node")
        return True
    finally:
        cursor.close()


def job_with_node(session: Session, name: str, lock: bool = False) -> Any:
    """`job_by_name` plus `node_name`: the name of the job's node, None without one (one read)."""
    return _JOB_WITH_NODE[lock].first(connection_of(session), name=name)


def job_by_name(session: Session, name: str, lock: bool = False) -> Any:
    """The job row called `name`, or None (locked FOR NO KEY UPDATE on PostgreSQL when asked)."""
    return _JOB_BY_NAME[lock].first(connection_of(session), name=name)
