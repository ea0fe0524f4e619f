"""The database schema, described once with SQLModel for SQLite and PostgreSQL.

Times are stored in UTC and always come back timezone-aware. Enumerations are
plain strings (no database enum types) so that adding a reason or a status never
needs a schema migration. Priority is stored as its rank (live 4 ... batch 0) so
that `ORDER BY priority DESC` is the class order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC; SQLite gets naive UTC text, PostgreSQL `timestamptz`."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes aware times")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    # On SQLite, bypass the generic DateTime processors: `isoformat(" ", "microseconds")`
    # and `fromisoformat` are C code and write exactly SQLAlchemy's storage format
    # ("YYYY-MM-DD HH:MM:SS.ffffff"), several times faster on bulk writes and reads.
    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError(f"naive datetime {value!r}: the store only takes aware times")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            return datetime.fromisoformat(value).replace(tzinfo=UTC)

        return process


def _json(nullable: bool = False) -> Any:
    return sa.Column(sa.JSON(), nullable=nullable)


def _time(nullable: bool = True, index: bool = False) -> Any:
    return sa.Column(UTCDateTime(), nullable=nullable, index=index)


class Scenario(SQLModel, table=True):
    """A command template jobs run (argv with `{placeholders}`)."""

    __tablename__ = "scenarios"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, sa_column_kwargs={"unique": True, "nullable": False})
    command: list[str] = Field(sa_column=_json())
    defaults: dict[str, Any] = Field(sa_column=_json())
    expected_duration_seconds: float | None = None
    requires: dict[str, str] = Field(sa_column=_json())
    labels: dict[str, str] = Field(sa_column=_json())
    source: str = Field(max_length=16)
    source_path: str | None = Field(default=None, max_length=4096)
    spec_hash: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=_time(nullable=False))
    updated_at: datetime = Field(sa_column=_time(nullable=False))


class Node(SQLModel, table=True):
    """A worker machine: declared by a manifest or registered by its first heartbeat."""

    __tablename__ = "nodes"
    __table_args__ = (sa.Index("idx_nodes_status_heartbeat", "status", "last_heartbeat"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, sa_column_kwargs={"unique": True, "nullable": False})
    status: str = Field(max_length=16)
    slots: int = 1
    labels: dict[str, str] = Field(sa_column=_json())
    """Labels from the manifest (or the API); merged over `reported_labels`."""
    reported_labels: dict[str, str] = Field(sa_column=_json())
    """Labels the worker advertises in its heartbeats."""
    unschedulable: bool = False
    declared: bool = False
    """True when a manifest or the API declares the node; False when it registered itself."""
    draining: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    """Its worker said it is stopping (`?draining=true`): nothing is bound to it until a
    heartbeat without the flag."""
    last_heartbeat: datetime | None = Field(default=None, sa_column=_time())
    status_changed_at: datetime = Field(sa_column=_time(nullable=False))
    source: str = Field(max_length=16)
    source_path: str | None = Field(default=None, max_length=4096)
    spec_hash: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_column=_time(nullable=False))
    updated_at: datetime = Field(sa_column=_time(nullable=False))


class Job(SQLModel, table=True):
    """One unit of work: a scenario with parameters, scheduled onto a node."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("idx_jobs_node_status", "node_id", "status"),
        # The queue: one ordered run of pending jobs per class (see domain.queue).
        sa.Index(
            "idx_jobs_queue",
            "priority",
            "created_at",
            "name",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        ),
        # Assigned and running jobs by the time their timeout (assign or stall) fires.
        sa.Index(
            "idx_jobs_timeout",
            "timeout_at",
            sqlite_where=sa.text("status IN ('assigned', 'running')"),
            postgresql_where=sa.text("status IN ('assigned', 'running')"),
        ),
        sa.Index("idx_jobs_status", "status"),
        sa.Index("idx_jobs_scenario", "scenario_name"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, sa_column_kwargs={"unique": True, "nullable": False})
    scenario_name: str = Field(max_length=63)
    parameters: dict[str, Any] = Field(sa_column=_json())
    priority: int = Field(sa_type=sa.SmallInteger)
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, sa_type=sa.Text)
    node_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("nodes.id", ondelete="SET NULL")),
    )
    attempt: int = 0
    retry_count: int = 0
    max_retries: int | None = None
    """None follows `faultTolerance.maxRetries`."""
    expected_duration_seconds: float | None = None
    active_deadline_seconds: float | None = None
    node_selector: dict[str, str] = Field(sa_column=_json())
    suspend: bool = False
    fail_on_exit_codes: list[int] = Field(sa_column=_json())
    labels: dict[str, str] = Field(sa_column=_json())
    source: str = Field(max_length=16)
    source_path: str | None = Field(default=None, max_length=4096)
    spec_hash: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=_time(nullable=False))
    updated_at: datetime = Field(sa_column=_time(nullable=False))
    assigned_at: datetime | None = Field(default=None, sa_column=_time())
    started_at: datetime | None = Field(default=None, sa_column=_time())
    finished_at: datetime | None = Field(default=None, sa_column=_time())
    not_before: datetime | None = Field(default=None, sa_column=_time())
    timeout_at: datetime | None = Field(default=None, sa_column=_time())
    """When the current attempt times out: assign timeout while assigned, stall limit while running."""


_jobs_table: sa.Table = Job.__table__  # type: ignore[attr-defined]
sa.Index(
    "idx_jobs_priority_created", _jobs_table.c.priority.desc(), _jobs_table.c.created_at.asc()
)


class JobAttempt(SQLModel, table=True):
    """The history of one attempt of a job: where it ran and how it ended."""

    __tablename__ = "job_attempts"
    __table_args__ = (sa.UniqueConstraint("job_id", "attempt", name="uq_job_attempts_job_attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        )
    )
    attempt: int
    node_name: str = Field(max_length=63)
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    exit_code: int | None = None
    message: str | None = Field(default=None, sa_type=sa.Text)
    log_tail: str | None = Field(default=None, sa_type=sa.Text)
    result: dict[str, Any] | None = Field(default=None, sa_column=_json(nullable=True))
    assigned_at: datetime = Field(sa_column=_time(nullable=False))
    started_at: datetime | None = Field(default=None, sa_column=_time())
    finished_at: datetime | None = Field(default=None, sa_column=_time())


class AuthToken(SQLModel, table=True):
    """An API token, stored only as its SHA-256."""

    __tablename__ = "auth_tokens"

    id: str = Field(primary_key=True, max_length=32)
    client_id: str = Field(max_length=128, index=True)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True, "nullable": False})
    role: str = Field(max_length=16)
    node: str | None = Field(default=None, max_length=63)
    expires_at: datetime = Field(sa_column=_time(nullable=False, index=True))
    created_at: datetime = Field(sa_column=_time(nullable=False))
    last_used_at: datetime | None = Field(default=None, sa_column=_time())
    revoked_at: datetime | None = Field(default=None, sa_column=_time())


class AuditLog(SQLModel, table=True):
    """One audited event, written in the same transaction as the change it records."""

    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("idx_audit_entity", "entity_type", "entity_id", "id"),
        sa.Index("idx_audit_event_type", "event_type", "id"),
        sa.Index("idx_audit_created", "created_at"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                          primary_key=True, autoincrement=True)
    )
    event_type: str = Field(max_length=64)
    entity_type: str = Field(max_length=32)
    entity_id: str = Field(max_length=255)
    client_id: str | None = Field(default=None, max_length=128)
    details: dict[str, Any] = Field(sa_column=_json())
    created_at: datetime = Field(sa_column=_time(nullable=False))


class ManifestFile(SQLModel, table=True):
    """Status of one file of the watched directory (`GET /manifests`)."""

    __tablename__ = "manifest_files"

    path: str = Field(primary_key=True, max_length=4096)
    content_hash: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=16)
    errors: list[dict[str, Any]] = Field(sa_column=_json())
    objects: list[str] = Field(sa_column=_json())
    applied_at: datetime | None = Field(default=None, sa_column=_time())
    updated_at: datetime = Field(sa_column=_time(nullable=False))


class Lease(SQLModel, table=True):
    """A named lease (leader election); `epoch` grows with every change of holder."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=255)
    epoch: int = 0
    acquired_at: datetime = Field(sa_column=_time(nullable=False))
    renewed_at: datetime = Field(sa_column=_time(nullable=False))
    expires_at: datetime = Field(sa_column=_time(nullable=False))


class ControllerState(SQLModel, table=True):
    """Small durable facts of the controller (mass-failure episode, ...), by key."""

    __tablename__ = "controller_state"

    key: str = Field(primary_key=True, max_length=64)
    value: dict[str, Any] = Field(sa_column=_json())
    updated_at: datetime = Field(sa_column=_time(nullable=False))


metadata = SQLModel.metadata
