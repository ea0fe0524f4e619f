"""The apply engine shared by the watched directory, `POST /apply` and `ffrtmp apply`.

Each object comes out `created`, `configured`, `unchanged` or an error; an error
changes nothing for that object and never stops the others. Scenarios are applied
first, then Nodes, then Jobs, so a Job may name a Scenario declared beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from controller.store.audit import write_audit
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


def _order(manifest: Manifest) -> int:
    return {"Scenario": 0, "Node": 1, "Job": 2}[manifest.kind]


def apply_objects(
    session: Session,
    objects: Sequence[Manifest],
    origin: Origin,
    now: datetime,
    config: ControllerConfig,
    dry_run: bool = False,
) -> list[ObjectResult]:
    """Apply manifests in the caller's transaction; results come back in input order."""
    results: dict[int, ObjectResult] = {}
    savepoint = session.begin_nested() if dry_run else None
    batch_scenarios = {
        m.name: m for m in objects if isinstance(m, ScenarioManifest)
    }
    for index in sorted(range(len(objects)), key=lambda i: _order(objects[i])):
        manifest = objects[index]
        if isinstance(manifest, ScenarioManifest):
            results[index] = _apply_scenario(session, manifest, origin, now, config)
        elif isinstance(manifest, NodeManifest):
            results[index] = _apply_node(session, manifest, origin, now)
        else:
            results[index] = _apply_job(session, manifest, origin, now, config, batch_scenarios)
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


def _missing_values(
    session: Session, m: JobManifest, batch_scenarios: dict[str, ScenarioManifest]
) -> str | None:
    """An error when the Job's Scenario is known and a placeholder has no value."""
    declared = batch_scenarios.get(m.spec.scenario)
    if declared is not None:
        command, defaults = list(declared.spec.command), dict(declared.spec.defaults)
    else:
        known = queries.scenarios_by_name(session, [m.spec.scenario]).get(m.spec.scenario)
        if known is None:
            return None
        command, defaults = known.command, known.defaults
    missing = placeholders(command) - set(defaults) - set(m.spec.parameters)
    if not missing:
        return None
    names = ", ".join("{" + p + "}" for p in sorted(missing))
    return f"spec.parameters: no value for placeholder(s) {names} of scenario '{m.spec.scenario}'"


def _apply_job(
    session: Session,
    m: JobManifest,
    origin: Origin,
    now: datetime,
    config: ControllerConfig,
    batch_scenarios: dict[str, ScenarioManifest],
) -> ObjectResult:
    if (error := _missing_values(session, m, batch_scenarios)) is not None:
        return ObjectResult("Job", m.name, Outcome.ERROR, error)
    digest = spec_hash(m)
    columns = job_columns(m)
    row = queries.job_by_name(session, m.name, lock=True)
    if row is None:
        session.execute(
            sa.insert(jobs_t).values(
                name=m.name, status=str(JobStatus.PENDING), attempt=0, retry_count=0,
                source=origin.source, source_path=origin.path, spec_hash=digest,
                created_at=now, updated_at=now, **columns,
            )
        )
        write_audit(session, "job.created", "job", m.name,
                    {"scenario": m.spec.scenario, "priority": str(m.spec.priority),
                     "source": origin.source, "path": origin.path}, now, origin.client_id)
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
        )
    session.execute(
        sa.update(jobs_t).where(jobs_t.c.id == row.id).values(
            source=origin.source, source_path=origin.path, spec_hash=digest, updated_at=now,
            **changes,
        )
    )
    if changes:
        write_audit(
            session, "job.updated", "job", m.name,
            {"changed": sorted(_SPEC_NAMES[k] for k in changes), "source": origin.source,
             "path": origin.path},
            now, origin.client_id,
        )
    if "expected_duration_seconds" in changes and row.status == str(JobStatus.RUNNING):
        refresh_running_timeouts(session, config, job_id=row.id)
    return ObjectResult("Job", m.name, Outcome.CONFIGURED if changes else Outcome.UNCHANGED)
