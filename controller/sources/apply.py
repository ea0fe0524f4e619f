"""The apply engine shared by the watched directory, `POST /apply` and `ffrtmp apply`.

Each object comes out `created`, `configured`, `unchanged` or an error; an error
changes nothing for that object and never stops the others. Scenarios are applied
first, then Nodes, then Jobs, so a Job may name a Scenario declared beside it.

Jobs take a bulk path: the rows named by the batch are read in one query, new jobs
and their `job.created` audit rows are inserted with one executemany each, and
unchanged ones cost no statement; anything else goes through the per-object path.
An object that the API created and a file later declares is adopted by the file
(audited as an update), while a file-owned object is refused to everyone else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import sqlalchemy as sa
from sqlmodel import Session

from controller.config import ControllerConfig
from controller.domain.states import JobStatus, NodeStatus, Priority
from controller.manifests.schema import (
    JobManifest,
    Manifest,
    NodeManifest,
    ScenarioManifest,
    placeholders,
    spec_hash,
)
from controller.store import queries
from controller.store.audit import write_audit, write_audit_many
from controller.store.bulk import insert_many
from controller.store.timeouts import refresh_running_timeouts
from controller.store.transitions import jobs_t, nodes_t

scenarios_t = queries.scenarios_t

IMMUTABLE_AFTER_PENDING = ("scenario", "parameters", "nodeSelector")


class Outcome(StrEnum):
    """Per-object result of an apply."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ObjectResult:
    """What happened to one object; `conflict` marks ownership and immutability refusals."""

    kind: str
    name: str
    result: Outcome
    error: str | None = None
    conflict: bool = False
    field: str | None = None
    """The manifest field an error is about (`spec.scenario`), when there is one."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Who applies: the API (and CLI) or a file of the watched directory."""

    source: Literal["api", "file"]
    path: str | None = None
    client_id: str | None = None


def _owned_elsewhere(row: Any, origin: Origin) -> str | None:
    """An error when the object belongs to a file other than the one applying it."""
    if row.source != "file":
        return None
    if origin.source == "file" and row.source_path == origin.path:
        return None
    return f"owned by file {row.source_path}: change it there"


_ORDER = {"Scenario": 0, "Node": 1, "Job": 2}


def _order(manifest: Manifest) -> int:
    return _ORDER[manifest.kind]


def apply_objects(
    session: Session,
    objects: Sequence[Manifest],
    origin: Origin,
    now: datetime,
    config: ControllerConfig,
    dry_run: bool = False,
    known_scenarios: Mapping[str, ScenarioManifest] | None = None,
) -> list[ObjectResult]:
    """Apply manifests in the caller's transaction; results come back in input order.

    `known_scenarios` are Scenarios declared elsewhere (other files of the watched
    directory) that a Job's placeholders are checked against before the database's.
    """
    results: dict[int, ObjectResult] = {}
    savepoint = session.begin_nested() if dry_run else None
    batch_scenarios = {**(known_scenarios or {})}
    batch_scenarios.update((m.name, m) for m in objects if isinstance(m, ScenarioManifest))
    jobs: list[tuple[int, JobManifest]] = []
    for index in sorted(range(len(objects)), key=lambda i: _order(objects[i])):
        manifest = objects[index]
        if isinstance(manifest, ScenarioManifest):
            results[index] = _apply_scenario(session, manifest, origin, now, config)
        elif isinstance(manifest, NodeManifest):
            results[index] = _apply_node(session, manifest, origin, now)
        else:
            jobs.append((index, manifest))
    if jobs:
        results.update(_apply_jobs(session, jobs, origin, now, config, batch_scenarios))
    if savepoint is not None:
        savepoint.rollback()
    return [results[i] for i in range(len(objects))]


def _apply_scenario(
    session: Session, m: ScenarioManifest, origin: Origin, now: datetime, config: ControllerConfig
) -> ObjectResult:
    digest = spec_hash(m)
    row = session.execute(sa.select(scenarios_t).where(scenarios_t.c.name == m.name)).first()
    values = {
        "command": list(m.spec.command),
        "defaults": dict(m.spec.defaults),
        "expected_duration_seconds": m.spec.expected_duration_seconds,
        "requires": dict(m.spec.requires),
        "labels": dict(m.labels),
        "source": origin.source,
        "source_path": origin.path,
        "spec_hash": digest,
        "updated_at": now,
    }
    if row is None:
        session.execute(sa.insert(scenarios_t).values(name=m.name, created_at=now, **values))
        write_audit(session, "scenario.created", "scenario", m.name,
                    {"source": origin.source, "path": origin.path}, now, origin.client_id)
        return ObjectResult("Scenario", m.name, Outcome.CREATED)
    if (error := _owned_elsewhere(row, origin)) is not None:
        return ObjectResult("Scenario", m.name, Outcome.ERROR, error, conflict=True)
    if row.spec_hash == digest and row.source == origin.source and row.source_path == origin.path:
        return ObjectResult("Scenario", m.name, Outcome.UNCHANGED)
    session.execute(sa.update(scenarios_t).where(scenarios_t.c.id == row.id).values(**values))
    write_audit(session, "scenario.updated", "scenario", m.name,
                {"source": origin.source, "path": origin.path}, now, origin.client_id)
    if row.expected_duration_seconds != m.spec.expected_duration_seconds:
        refresh_running_timeouts(session, config, scenario_name=m.name)
    return ObjectResult("Scenario", m.name, Outcome.CONFIGURED)


def _apply_node(session: Session, m: NodeManifest, origin: Origin, now: datetime) -> ObjectResult:
    digest = spec_hash(m)
    row = session.execute(sa.select(nodes_t).where(nodes_t.c.name == m.name)).first()
    values = {
        "slots": m.spec.slots,
        "unschedulable": m.spec.unschedulable,
        "labels": dict(m.labels),
        "declared": True,
        "source": origin.source,
        "source_path": origin.path,
        "spec_hash": digest,
        "updated_at": now,
    }
    if row is None:
        session.execute(
            sa.insert(nodes_t).values(
                name=m.name, status=str(NodeStatus.UNKNOWN), reported_labels={},
                status_changed_at=now, created_at=now, **values,
            )
        )
        write_audit(session, "node.registered", "node", m.name,
                    {"source": origin.source, "path": origin.path, "declared": True},
                    now, origin.client_id)
        return ObjectResult("Node", m.name, Outcome.CREATED)
    if (error := _owned_elsewhere(row, origin)) is not None:
        return ObjectResult("Node", m.name, Outcome.ERROR, error, conflict=True)
    if (row.declared and row.spec_hash == digest and row.source == origin.source
            and row.source_path == origin.path):
        return ObjectResult("Node", m.name, Outcome.UNCHANGED)
    session.execute(sa.update(nodes_t).where(nodes_t.c.id == row.id).values(**values))
    write_audit(session, "node.updated", "node", m.name,
                {"source": origin.source, "path": origin.path, "slots": m.spec.slots,
                 "unschedulable": m.spec.unschedulable, "labels": dict(m.labels)},
                now, origin.client_id)
    return ObjectResult("Node", m.name, Outcome.CONFIGURED)


def job_columns(m: JobManifest) -> dict[str, Any]:
    """The jobs-table columns a Job manifest declares."""
    spec = m.spec
    return {
        "scenario_name": spec.scenario,
        "parameters": dict(spec.parameters),
        "priority": Priority(spec.priority).rank,
        "max_retries": spec.max_retries,
        "expected_duration_seconds": spec.expected_duration_seconds,
        "active_deadline_seconds": spec.active_deadline_seconds,
        "node_selector": dict(spec.node_selector),
        "suspend": spec.suspend,
        "fail_on_exit_codes": list(spec.retry_policy.fail_on_exit_codes),
        "labels": dict(m.labels),
    }


_SPEC_NAMES = {
    "scenario_name": "scenario",
    "parameters": "parameters",
    "priority": "priority",
    "max_retries": "maxRetries",
    "expected_duration_seconds": "expectedDurationSeconds",
    "active_deadline_seconds": "activeDeadlineSeconds",
    "node_selector": "nodeSelector",
    "suspend": "suspend",
    "fail_on_exit_codes": "retryPolicy.failOnExitCodes",
    "labels": "metadata.labels",
}


_Template = frozenset[str]
"""A scenario as the placeholder check sees it: the placeholders its defaults leave open."""


def _templates(
    session: Session, jobs: Sequence[JobManifest], batch_scenarios: Mapping[str, ScenarioManifest]
) -> dict[str, _Template]:
    """The scenarios the jobs name: declared in the batch, else stored (one query)."""
    wanted = {j.spec.scenario for j in jobs}
    out: dict[str, _Template] = {}
    for name in wanted:
        declared = batch_scenarios.get(name)
        if declared is not None:
            out[name] = frozenset(placeholders(declared.spec.command)).difference(
                declared.spec.defaults
            )
    stored = sorted(wanted - out.keys())
    if stored:
        for name, info in queries.scenarios_by_name(session, stored).items():
            out[name] = frozenset(placeholders(info.command)).difference(info.defaults)
    return out


def _missing_values(m: JobManifest, templates: Mapping[str, _Template]) -> str | None:
    """An error when the Job's Scenario is known and a placeholder has no value."""
    open_ = templates.get(m.spec.scenario)
    if not open_:
        return None
    missing = open_.difference(m.spec.parameters)
    if not missing:
        return None
    names = ", ".join("{" + p + "}" for p in sorted(missing))
    return f"spec.parameters: no value for placeholder(s) {names} of scenario '{m.spec.scenario}'"


def _created_job(
    m: JobManifest, digest: str, origin: Origin, now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The jobs row and the `job.created` audit row of a new job."""
    name, spec = m.name, m.spec
    row = {
        "name": name, "status": _PENDING, "attempt": 0, "retry_count": 0,
        "source": origin.source, "source_path": origin.path, "spec_hash": digest,
        "created_at": now, "updated_at": now, **job_columns(m),
    }
    audit = {
        "event_type": "job.created", "entity_type": "job", "entity_id": name,
        "client_id": origin.client_id, "created_at": now,
        "details": {"scenario": spec.scenario, "priority": str(spec.priority),
                    "source": origin.source, "path": origin.path},
    }
    return row, audit


def create_job(session: Session, m: JobManifest, origin: Origin, now: datetime) -> ObjectResult:
    """A Job its caller found new in this transaction (`POST /jobs`): `_apply_jobs`' path for
    a new job, without looking its name up again."""
    if (error := _missing_values(m, _templates(session, [m], {}))) is not None:
        return ObjectResult("Job", m.name, Outcome.ERROR, error, field="spec.parameters")
    row, audit = _created_job(m, spec_hash(m), origin, now)
    insert_many(session, jobs_t, [row])
    write_audit_many(session, [audit])
    return ObjectResult("Job", m.name, Outcome.CREATED)


_PENDING = str(JobStatus.PENDING)


_JOB_BATCH = 500


def _apply_jobs(
    session: Session,
    jobs: Sequence[tuple[int, JobManifest]],
    origin: Origin,
    now: datetime,
    config: ControllerConfig,
    batch_scenarios: Mapping[str, ScenarioManifest],
) -> dict[int, ObjectResult]:
    """Apply Jobs: new ones in bulk, unchanged ones for free, the rest one by one."""
    templates = _templates(session, [m for _, m in jobs], batch_scenarios)
    existing = _job_states(session, [m.name for _, m in jobs])
    results: dict[int, ObjectResult] = {}
    rows: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []

    def flush() -> None:
        if rows:
            insert_many(session, jobs_t, rows)
            write_audit_many(session, audits)
            rows.clear()
            audits.clear()

    for index, m in jobs:
        name = m.name
        if (error := _missing_values(m, templates)) is not None:
            results[index] = ObjectResult("Job", name, Outcome.ERROR, error, field="spec.parameters")
            continue
        digest = spec_hash(m)
        state = existing.get(name)
        if state is None:
            row, audit = _created_job(m, digest, origin, now)
            rows.append(row)
            audits.append(audit)
            # A name declared twice in one batch: the second one sees the first.
            existing[name] = (digest, origin.source, origin.path)
            results[index] = ObjectResult("Job", name, Outcome.CREATED)
            if len(rows) >= _JOB_BATCH:
                flush()
        elif state == (digest, origin.source, origin.path):
            results[index] = ObjectResult("Job", name, Outcome.UNCHANGED)
        else:
            flush()  # keep the audit rows in the order the objects were applied
            results[index] = _apply_job(session, m, origin, now, config, digest)
            existing[name] = (digest, origin.source, origin.path)
    flush()
    return results


_JOB_STATES = sa.select(
    jobs_t.c.name, jobs_t.c.spec_hash, jobs_t.c.source, jobs_t.c.source_path
).where(jobs_t.c.name.in_(sa.bindparam("names", expanding=True)))
_JOB_STATES_LOCKED = _JOB_STATES.with_for_update()


def _job_states(session: Session, names: Sequence[str]) -> dict[str, tuple[str, str, str | None]]:
    """(spec hash, source, source path) of the named jobs that exist (locked on PostgreSQL)."""
    out: dict[str, tuple[str, str, str | None]] = {}
    connection = session.connection()
    # One statement built once: its compiled form is cached, only the names vary.
    statement = _JOB_STATES_LOCKED if connection.dialect.name == "postgresql" else _JOB_STATES
    unique = sorted(set(names))
    for start in range(0, len(unique), _JOB_BATCH):
        for r in connection.execute(statement, {"names": unique[start:start + _JOB_BATCH]}):
            out[r.name] = (r.spec_hash, r.source, r.source_path)
    return out


def _apply_job(
    session: Session,
    m: JobManifest,
    origin: Origin,
    now: datetime,
    config: ControllerConfig,
    digest: str,
) -> ObjectResult:
    """The per-object path of one Job (placeholders already checked)."""
    columns = job_columns(m)
    row = queries.job_by_name(session, m.name, lock=True)
    if row is None:
        created, audit = _created_job(m, digest, origin, now)
        session.execute(sa.insert(jobs_t).values(**created))
        write_audit_many(session, [audit])
        return ObjectResult("Job", m.name, Outcome.CREATED)
    if (error := _owned_elsewhere(row, origin)) is not None:
        return ObjectResult("Job", m.name, Outcome.ERROR, error, conflict=True)
    if row.spec_hash == digest and row.source == origin.source and row.source_path == origin.path:
        return ObjectResult("Job", m.name, Outcome.UNCHANGED)
    changes = {k: v for k, v in columns.items() if getattr(row, k) != v}
    left_pending = row.status != str(JobStatus.PENDING) or row.attempt > 0
    frozen = [_SPEC_NAMES[k] for k in ("scenario_name", "parameters", "node_selector") if k in changes]
    if frozen and left_pending:
        return ObjectResult(
            "Job", m.name, Outcome.ERROR,
            f"spec.{frozen[0]} cannot change once the job has left pending "
            f"(status {row.status}, attempt {row.attempt})",
            conflict=True,
            field=f"spec.{frozen[0]}",
        )
    if "max_retries" in changes:
        lowered = m.spec.max_retries if m.spec.max_retries is not None else config.fault_tolerance.max_retries
        if lowered < row.retry_count:
            # retryCount <= maxRetries holds for every job: the retries already spent stay spent.
            return ObjectResult(
                "Job", m.name, Outcome.ERROR,
                f"spec.maxRetries {lowered} is below the retries this job has already used "
                f"(retryCount {row.retry_count})",
                conflict=True, field="spec.maxRetries",
            )
    adopted = row.source != origin.source
    session.execute(
        sa.update(jobs_t).where(jobs_t.c.id == row.id).values(
            source=origin.source, source_path=origin.path, spec_hash=digest, updated_at=now,
            **changes,
        )
    )
    if changes or adopted:
        details: dict[str, Any] = {"changed": sorted(_SPEC_NAMES[k] for k in changes),
                                   "source": origin.source, "path": origin.path}
        if adopted:
            details["adoptedFrom"] = row.source
        write_audit(session, "job.updated", "job", m.name, details, now, origin.client_id)
    if "expected_duration_seconds" in changes and row.status == str(JobStatus.RUNNING):
        refresh_running_timeouts(session, config, job_id=row.id)
    configured = bool(changes) or adopted
    return ObjectResult("Job", m.name, Outcome.CONFIGURED if configured else Outcome.UNCHANGED)
