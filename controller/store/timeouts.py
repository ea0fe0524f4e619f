"""Keeping `jobs.timeout_at` true when what it was computed from changes.

The reconcile pass finds stalled and never-started attempts through an index on
`timeout_at`, so its cost follows what is due, not how many jobs run. The value
is set by the transitions; here it is recomputed when a job's or a scenario's
`expectedDurationSeconds` changes, and at controller start (the config's
`stalledFactor`, `stalledGraceSeconds` or `assignTimeoutSeconds` may differ
from the previous run's).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from controller.config import ControllerConfig
from controller.domain.policy import assigned_timeout_at, running_timeout_at
from controller.domain.states import JobStatus
from controller.store.queries import scenarios_t
from controller.store.transitions import jobs_t


def expected_seconds(job_expected: float | None, scenario_expected: float | None) -> float | None:
    """The job's own expected duration, else its scenario's."""
    return job_expected if job_expected is not None else scenario_expected


def refresh_running_timeouts(
    session: Session,
    config: ControllerConfig,
    scenario_name: str | None = None,
    job_id: int | None = None,
) -> int:
    """Recompute the stall deadline of running jobs (all, one scenario's, or one job)."""
    statement = (
        sa.select(
            jobs_t.c.id, jobs_t.c.started_at, jobs_t.c.expected_duration_seconds,
            scenarios_t.c.expected_duration_seconds.label("scenario_expected"),
        )
        .select_from(jobs_t.outerjoin(scenarios_t, scenarios_t.c.name == jobs_t.c.scenario_name))
        .where(jobs_t.c.status == str(JobStatus.RUNNING))
    )
    if scenario_name is not None:
        statement = statement.where(jobs_t.c.scenario_name == scenario_name)
    if job_id is not None:
        statement = statement.where(jobs_t.c.id == job_id)
    updates: list[dict[str, Any]] = []
    for row in session.execute(statement):
        if row.started_at is None:
            continue
        expected = expected_seconds(row.expected_duration_seconds, row.scenario_expected)
        updates.append(
            {"w_id": row.id,
             "v_timeout": running_timeout_at(row.started_at, expected, config.fault_tolerance)}
        )
    _write(session, updates, JobStatus.RUNNING)
    return len(updates)


def refresh_assigned_timeouts(session: Session, config: ControllerConfig) -> int:
    """Recompute the start deadline of every assigned job."""
    rows = session.execute(
        sa.select(jobs_t.c.id, jobs_t.c.assigned_at).where(
            jobs_t.c.status == str(JobStatus.ASSIGNED)
        )
    )
    updates = [
        {"w_id": r.id, "v_timeout": assigned_timeout_at(r.assigned_at, config.fault_tolerance)}
        for r in rows
        if r.assigned_at is not None
    ]
    _write(session, updates, JobStatus.ASSIGNED)
    return len(updates)


def _write(session: Session, updates: list[dict[str, Any]], status: JobStatus) -> None:
    if updates:
        session.execute(
            sa.update(jobs_t)
            .where(jobs_t.c.id == sa.bindparam("w_id"), jobs_t.c.status == str(status))
            .values(timeout_at=sa.bindparam("v_timeout")),
            updates,
        )
