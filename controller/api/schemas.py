"""Request and response bodies of the HTTP API (SPEC section 8): flat JSON, camelCase names.

Requests refuse unknown fields. Every string, number and key that reaches the
database is checked to be storable (`storable`): no NUL character, no lone
surrogate, no NaN or infinity, no integer wider than 64 bits. PostgreSQL refuses
all of these, so without the check a hostile body would be a 500 instead of a 422.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from controller.auth.roles import Role
from controller.domain.states import Priority
from controller.manifests.schema import ExitCode, Labels, Name, Parameters, Seconds

MAX_INT = 2**63 - 1
INT32 = 2**31 - 1
MAX_DEPTH = 32

T = TypeVar("T")


_TOO_DEEP = "nested too deeply"
_NUL = "strings must not contain NUL characters"
_SURROGATE = "strings must be valid Unicode (no lone surrogates)"
_TOO_BIG = "integers must fit in 64 bits"
_NOT_FINITE = "numbers must be finite"


def _text(value: str) -> str | None:
    if "\x00" in value:
        return _NUL
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE
    return None


def storable(value: Any, depth: int = 0) -> str | None:
    """Why `value` (decoded JSON) cannot be stored, or None when it can.

    Every request body and every `POST /apply` item goes through here: the strings,
    integers and booleans of a container, most of what a body holds, are judged in its
    loop, without a call each (a clean ASCII string costs two C scans).
    """
    if depth > MAX_DEPTH:
        return _TOO_DEEP
    kind = type(value)
    if kind is dict:
        if depth == MAX_DEPTH:
            return _TOO_DEEP if value else None  # its keys are one level deeper
        for key, item in value.items():
            if type(key) is not str or "\x00" in key or not key.isascii():
                problem = storable(key, depth + 1)
                if problem:
                    return problem
            problem = _item(item, depth + 1)
            if problem:
                return problem
        return None
    if kind is list:
        if depth == MAX_DEPTH:
            return _TOO_DEEP if value else None
        for item in value:
            problem = _item(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if -MAX_INT - 1 <= value <= MAX_INT else _TOO_BIG
    if isinstance(value, float):
        return None if math.isfinite(value) else _NOT_FINITE
    if isinstance(value, dict):
        return storable(dict(value), depth)
    if isinstance(value, list | tuple):
        return storable(list(value), depth)
    return None


def _item(item: Any, depth: int) -> str | None:
    """`storable(item, depth)` of a container's item, judged inline when it is plain."""
    kind = type(item)
    if kind is str:
        return None if "\x00" not in item and item.isascii() else _text(item)
    if kind is int:
        return None if -MAX_INT - 1 <= item <= MAX_INT else _TOO_BIG
    if kind is bool or item is None:
        return None
    return storable(item, depth)


class ApiModel(BaseModel):
    """Camel-case JSON names, snake_case Python attributes."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
        serialize_by_alias=True, from_attributes=True,
    )


class RequestModel(ApiModel):
    """A request body: unknown fields refused, everything storable."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        problem = storable(data)
        if problem:
            raise ValueError(problem)
        return data


# --- errors and lists -----------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """What went wrong: a stable CamelCase code and a sentence."""

    code: str = Field(examples=["NotFound"])
    message: str = Field(examples=["job 'news-720p' not found"])


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


class Page(ApiModel, Generic[T]):
    """A page of a list; `next` is the cursor of the following page (null at the end)."""

    items: list[T]
    next: str | None = Field(default=None, description="Pass as `?cursor=` to get the next page.")


# --- jobs -----------------------------------------------------------------------------------


class RetryPolicyIn(RequestModel):
    """Exit codes that fail a job at once, without retry."""

    fail_on_exit_codes: list[ExitCode] = Field(default_factory=list)


class JobCreate(RequestModel):
    """`POST /jobs`: a job from fields (the spec of a Job manifest, flat)."""

    scenario: Name
    priority: Priority = Priority.MEDIUM
    parameters: Parameters = Field(default_factory=dict)
    name: Name | None = Field(default=None, description="Generated from the scenario when omitted.")
    labels: Labels = Field(default_factory=dict)
    max_retries: Annotated[int, Field(ge=0, le=INT32)] | None = None
    expected_duration_seconds: Seconds | None = None
    active_deadline_seconds: Seconds | None = None
    node_selector: Labels = Field(default_factory=dict)
    suspend: bool = False
    retry_policy: RetryPolicyIn | None = None

    def spec_fields(self) -> dict[str, Any]:
        """The optional spec fields given, in the manifest's camelCase shape."""
        data = self.model_dump(
            by_alias=True, exclude_none=True, exclude_unset=True,
            exclude={"scenario", "priority", "parameters", "name", "labels"},
        )
        return data


class AttemptOut(ApiModel):
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


class JobOut(ApiModel):
    """A job: its spec and its status (SPEC section 4)."""

    name: str
    scenario: str
    parameters: dict[str, Any]
    priority: Priority
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
    attempts: list[AttemptOut] = Field(
        default_factory=list, description="Filled by `GET /jobs/{name}`; empty in lists."
    )


class AttemptLog(ApiModel):
    """The output tail an attempt's worker reported."""

    attempt: int
    node: str
    status: str
    log_tail: str | None


class JobLogs(ApiModel):
    """`GET /jobs/{name}/logs`: every attempt's output tail, oldest first."""

    job: str
    attempts: list[AttemptLog]


# --- apply and manifests --------------------------------------------------------------------


class ApplyResult(ApiModel):
    """What happened to one object of `POST /apply`."""

    kind: str | None
    name: str | None
    result: Literal["created", "configured", "unchanged", "error"]
    error: str | None = None
    line: int | None = Field(default=None, description="Line of the problem in the body (errors).")


class ApplyResponse(ApiModel):
    """Per-object results, in the order of the body (invalid documents included)."""

    results: list[ApplyResult]
    dry_run: bool = False


class ApplyConflict(ErrorBody):
    """409 from `POST /apply`: an object is owned by a file (named) or immutable; the results say
    what happened to every object."""

    results: list[ApplyResult]


class ManifestError(ApiModel):
    """One problem of a watched file."""

    line: int | None = None
    field: str | None = None
    message: str


class ManifestFileOut(ApiModel):
    """The status of one file of the watched directory."""

    path: str
    status: Literal["ok", "invalid", "conflict"] | str
    errors: list[ManifestError]
    objects: list[str]
    applied_at: datetime | None


# --- nodes and the worker protocol ----------------------------------------------------------


class NodeOut(ApiModel):
    """A node: declared spec, reported labels and liveness."""

    name: str
    status: str
    slots: int
    running: int
    labels: dict[str, str]
    unschedulable: bool
    draining: bool = Field(description="Its worker is stopping: nothing new is bound to it.")
    declared: bool
    last_heartbeat: datetime | None
    status_changed_at: datetime
    source: str
    source_path: str | None
    created_at: datetime


class AttemptRef(RequestModel):
    """An attempt of a job, as the worker holds it."""

    job: Name
    attempt: Annotated[int, Field(ge=1, le=INT32)]


class AttemptRefOut(ApiModel):
    """An attempt the worker must stop."""

    job: str
    attempt: int


class HeartbeatIn(RequestModel):
    """A worker's heartbeat: its capacity, its labels and every attempt it holds."""

    slots: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None, description="Concurrent jobs (a declared Node's slots win)."
    )
    labels: Labels | None = Field(default=None, description="Reported labels, e.g. `ffmpeg: \"true\"`.")
    running: list[AttemptRef] | None = Field(
        default=None,
        description="Every attempt the worker holds (started, or finished and not yet "
        "acknowledged). Omitted: nothing is concluded from absences.",
    )


class AssignmentOut(ApiModel):
    """Work to start: the attempt to report with, the argv and the hard deadline."""

    job: str
    attempt: int
    command: list[str]
    active_deadline_seconds: float | None


class HeartbeatOut(ApiModel):
    """What the worker must start and stop, and when to call again."""

    assignments: list[AssignmentOut]
    cancel: list[AttemptRefOut]
    heartbeat_interval_seconds: float


class _ReportFields(RequestModel):
    """What a worker says about one attempt."""

    state: Literal["running", "completed", "failed", "released"]
    exit_code: Annotated[int, Field(ge=-INT32 - 1, le=INT32)] | None = None
    message: Annotated[str, Field(max_length=4096)] | None = None
    log_tail: Annotated[str, Field(max_length=1_048_576)] | None = None
    result: dict[str, Any] | None = None
    reason: Literal["DeadlineExceeded", "InvalidParameters"] | None = Field(
        default=None, description="For `failed`: why, when it was not a plain exit code."
    )


class ReportIn(_ReportFields):
    """A worker's report on one attempt."""

    node: Name | None = Field(
        default=None, description="The reporting node (checked against a worker token's node)."
    )


class ReportOut(ApiModel):
    """The job after the report; `applied` is false for a report already applied."""

    job: str
    attempt: int
    status: str
    applied: bool


MAX_REPORTS = 256
"""Reports in one `POST /nodes/{name}/reports`."""


class AttemptReportIn(_ReportFields):
    """One report of a batch: the attempt it is about, and what the single report says."""

    job: Name
    attempt: Annotated[int, Field(ge=1, le=INT32)]


class ReportsIn(RequestModel):
    """A worker's reports on several attempts of its node, applied in order."""

    reports: Annotated[list[AttemptReportIn], Field(min_length=1, max_length=MAX_REPORTS)]


class ReportResultOut(ApiModel):
    """One report's outcome: as `POST /jobs/{name}/attempts/{attempt}` answers it, or its error.

    `error` is set (and `status`, `applied` are not) when that route would have refused
    the report: `StaleAttempt` (its 409), `NotFound` (404), `Forbidden` (403).
    """

    job: str
    attempt: int
    status: str | None = None
    applied: bool = False
    error: ErrorDetail | None = None


class ReportsOut(ApiModel):
    """The outcomes, in the order of the reports."""

    results: list[ReportResultOut]


# --- queue, audit, tokens, probes -----------------------------------------------------------


class QueueStatsOut(ApiModel):
    """Totals by status, and pending jobs by class."""

    total_pending: int
    total_assigned: int
    total_running: int
    total_completed: int
    total_failed: int
    total_cancelled: int
    by_priority: dict[str, int]


class AuditOut(ApiModel):
    """One audit entry."""

    id: int
    event_type: str
    entity_type: str
    entity_id: str
    client_id: str | None
    details: dict[str, Any]
    created_at: datetime


class TokenCreate(RequestModel):
    """`POST /auth/tokens`."""

    client_id: Annotated[str, Field(min_length=1, max_length=128)]
    role: Role
    node: Name | None = Field(default=None, description="Required for (and only for) worker tokens.")
    expires_minutes: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="Minutes, fractions allowed; default `auth.tokenExpiryMinutes`."
    )


class TokenCreated(ApiModel):
    """A new token: `token` is shown this once."""

    id: str
    token: str
    client_id: str
    role: str
    node: str | None
    expires_at: datetime


class TokenOut(ApiModel):
    """A stored token, never its secret nor its hash."""

    id: str
    client_id: str
    role: str
    node: str | None
    expires_at: datetime
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class Health(BaseModel):
    """`GET /healthz`."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """`GET /readyz`: 200 when ready, 503 otherwise, with the reason."""

    status: Literal["ready", "unready"]
    database: str
    schema_revision: str | None = Field(default=None, alias="schemaRevision")
    schema_head: str | None = Field(default=None, alias="schemaHead")
    stopping: bool = False
    leader: bool = False
    """True on the replica that holds the leader lease (runs the reconcile pass)."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)
