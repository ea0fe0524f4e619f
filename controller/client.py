"""A typed HTTP client of the controller's API, shared by the CLI and the worker.

One method per route; answers are the API's JSON (camelCase) as TypedDicts. Every
failure raises `ApiError(status, code, message)`: an error answer of the API, or
status 0 (`Unreachable`) when the controller could not be reached at all.

This module talks HTTP only: it imports nothing of the controller's internals, so
the worker can use it without the database layer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypedDict, cast

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
LONG_POLL_MARGIN = 10.0
"""Seconds a long-poll's HTTP timeout exceeds the wait it asks for."""


class ApiError(Exception):
    """A refused or failed call: HTTP status (0: unreachable), error code and message."""

    def __init__(
        self, status: int, code: str, message: str, body: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body: dict[str, Any] = dict(body or {})
        self.retry_after = retry_after


# --- shapes ------------------------------------------------------------------------------------


class Attempt(TypedDict):
    """One attempt of a job."""

    attempt: int
    node: str
    status: str
    reason: str | None
    exitCode: int | None
    message: str | None
    assignedAt: str
    startedAt: str | None
    finishedAt: str | None


class Job(TypedDict, total=False):
    """A job (`GET /jobs/{name}`); `attempts` is empty in lists."""

    name: str
    scenario: str
    parameters: dict[str, Any]
    priority: str
    status: str
    reason: str | None
    message: str | None
    node: str | None
    attempt: int
    retryCount: int
    maxRetries: int
    createdAt: str
    startedAt: str | None
    finishedAt: str | None
    notBefore: str | None
    source: str
    sourcePath: str | None
    labels: dict[str, str]
    suspend: bool
    nodeSelector: dict[str, str]
    expectedDurationSeconds: float | None
    activeDeadlineSeconds: float | None
    failOnExitCodes: list[int]
    assignedAt: str | None
    updatedAt: str
    attempts: list[Attempt]


class Node(TypedDict):
    """A node."""

    name: str
    status: str
    slots: int
    running: int
    labels: dict[str, str]
    unschedulable: bool
    draining: bool
    declared: bool
    lastHeartbeat: str | None
    statusChangedAt: str
    source: str
    sourcePath: str | None
    createdAt: str


class Page(TypedDict):
    """A page of a list; pass `next` as `cursor` for the following one."""

    items: list[Any]
    next: str | None


class Assignment(TypedDict):
    """Work to start."""

    job: str
    attempt: int
    command: list[str]
    activeDeadlineSeconds: float | None


class AttemptRef(TypedDict):
    """An attempt of a job."""

    job: str
    attempt: int


class HeartbeatReply(TypedDict):
    """What to start, what to stop, when to call again."""

    assignments: list[Assignment]
    cancel: list[AttemptRef]
    heartbeatIntervalSeconds: float


class ReportReply(TypedDict):
    """The job after a report; `applied` is False for a duplicate."""

    job: str
    attempt: int
    status: str
    applied: bool


class ErrorDetail(TypedDict):
    """An error's stable code and sentence."""

    code: str
    message: str


class ReportResult(TypedDict):
    """One report of a batch: as `ReportReply`, or `error` (with what the single route refuses)."""

    job: str
    attempt: int
    status: str | None
    applied: bool
    error: ErrorDetail | None


class ReportsReply(TypedDict):
    """The outcomes of a batch of reports, in order."""

    results: list[ReportResult]


class ApplyResult(TypedDict):
    """What happened to one applied object."""

    kind: str | None
    name: str | None
    result: Literal["created", "configured", "unchanged", "error"]
    error: str | None
    line: int | None


class ApplyReply(TypedDict):
    """`POST /apply`."""

    results: list[ApplyResult]
    dryRun: bool


class QueueStats(TypedDict):
    """`GET /queue/stats`."""

    totalPending: int
    totalAssigned: int
    totalRunning: int
    totalCompleted: int
    totalFailed: int
    totalCancelled: int
    byPriority: dict[str, int]


class TokenCreated(TypedDict):
    """A new token: `token` is shown this once."""

    id: str
    token: str
    clientId: str
    role: str
    node: str | None
    expiresAt: str


ReportState = Literal["running", "completed", "failed", "released"]


# --- the client --------------------------------------------------------------------------------


def api_error(status: int, content: bytes, reason: str, retry_after: str | None) -> ApiError:
    """The `ApiError` of an error answer: its status, body, reason phrase and Retry-After."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code, message = str(detail.get("code", "Error")), str(detail.get("message", ""))
    else:
        code, message = "Error", content[:200].decode("utf-8", "replace") or reason
    return ApiError(status, code, message, body if isinstance(body, dict) else None,
                    float(retry_after) if retry_after and retry_after.isdigit() else None)


def _error(response: httpx.Response) -> ApiError:
    return api_error(response.status_code, response.content, response.reason_phrase,
                     response.headers.get("retry-after"))


def resolve(server: str | None, token: str | None) -> tuple[str, str | None]:
    """The server URL and token to use: as given, else FFRTMP_SERVER/FFRTMP_TOKEN, else the default."""
    url = (server or os.environ.get("FFRTMP_SERVER") or DEFAULT_SERVER).rstrip("/")
    return url, token if token is not None else os.environ.get("FFRTMP_TOKEN")


def heartbeat_request(
    slots: int | None, labels: Mapping[str, str] | None, running: Sequence[tuple[str, int]] | None,
    wait_seconds: float, draining: bool,
) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    """A heartbeat's body, query and HTTP timeout (None: the client's own)."""
    body: dict[str, Any] = {}
    if slots is not None:
        body["slots"] = slots
    if labels is not None:
        body["labels"] = dict(labels)
    if running is not None:
        body["running"] = [{"job": j, "attempt": a} for j, a in running]
    params: dict[str, Any] = {"waitSeconds": wait_seconds} if wait_seconds > 0 else {}
    if draining:
        params["draining"] = "true"
    timeout = wait_seconds + LONG_POLL_MARGIN if wait_seconds > 0 else None
    return body, params, timeout


def report_body(
    state: ReportState, exit_code: int | None, message: str | None, log_tail: str | None,
    result: Mapping[str, Any] | None, reason: str | None, node: str | None,
) -> dict[str, Any]:
    """A worker report's body (fields left out when unset)."""
    fields = {"state": state, "exitCode": exit_code, "message": message, "logTail": log_tail,
              "result": dict(result) if result is not None else None, "reason": reason,
              "node": node}
    return {k: v for k, v in fields.items() if v is not None}


def attempt_report(
    job: str, attempt: int, state: ReportState, exit_code: int | None = None, message: str | None = None,
    log_tail: str | None = None, result: Mapping[str, Any] | None = None, reason: str | None = None,
) -> dict[str, Any]:
    """One item of `POST /nodes/{name}/reports` (fields left out when unset)."""
    return {"job": job, "attempt": attempt,
            **report_body(state, exit_code, message, log_tail, result, reason, None)}


class Client:
    """The controller's API over HTTP (`server` and `token` default to FFRTMP_SERVER/FFRTMP_TOKEN)."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server, token = resolve(server, token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout,
                                  verify=verify, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
        content: bytes | None = None, headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, json=json, params=query, content=content, headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise ApiError(0, "Timeout", f"{self.server}: no answer in time ({exc})") from exc
        except httpx.HTTPError as exc:
            raise ApiError(0, "Unreachable", f"{self.server}: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    # --- jobs ----------------------------------------------------------------------------------

    def submit_job(
        self, scenario: str, priority: str | None = None, parameters: Mapping[str, Any] | None = None,
        name: str | None = None, **spec: Any,
    ) -> Job:
        """`POST /jobs`; `spec` takes the other fields by their JSON names (`maxRetries=2`)."""
        body: dict[str, Any] = {"scenario": scenario, **spec}
        if priority is not None:
            body["priority"] = priority
        if parameters is not None:
            body["parameters"] = dict(parameters)
        if name is not None:
            body["name"] = name
        return cast(Job, self._json("POST", "/jobs", json=body))

    def list_jobs(
        self, status: str | None = None, priority: str | None = None, node: str | None = None,
        limit: int | None = None, cursor: str | None = None,
    ) -> Page:
        """`GET /jobs`: one page."""
        return cast(Page, self._json("GET", "/jobs", params={
            "status": status, "priority": priority, "node": node, "limit": limit, "cursor": cursor}))

    def iter_jobs(self, status: str | None = None, priority: str | None = None,
                  node: str | None = None) -> Iterator[Job]:
        """Every job matching the filters, page after page."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(status, priority, node, limit=1000, cursor=cursor)
            yield from page["items"]
            cursor = page["next"]
            if cursor is None:
                return

    def get_job(self, name: str) -> Job:
        """`GET /jobs/{name}`."""
        return cast(Job, self._json("GET", f"/jobs/{name}"))

    def patch_job(self, name: str, patch: Mapping[str, Any]) -> Job:
        """`PATCH /jobs/{name}` with a JSON merge patch."""
        return cast(Job, self._json("PATCH", f"/jobs/{name}", json=dict(patch),
                                    headers={"Content-Type": "application/merge-patch+json"}))

    def set_priority(self, name: str, priority: str) -> Job:
        """Change a job's priority class."""
        return self.patch_job(name, {"priority": priority})

    def cancel_job(self, name: str) -> Job:
        """`POST /jobs/{name}/cancel`."""
        return cast(Job, self._json("POST", f"/jobs/{name}/cancel"))

    def retry_job(self, name: str) -> Job:
        """`POST /jobs/{name}/retry`."""
        return cast(Job, self._json("POST", f"/jobs/{name}/retry"))

    def delete_job(self, name: str) -> None:
        """`DELETE /jobs/{name}`."""
        self._call("DELETE", f"/jobs/{name}")

    def job_logs(self, name: str) -> dict[str, Any]:
        """`GET /jobs/{name}/logs`: `{"job", "attempts": [{"attempt", "node", "status", "logTail"}]}`."""
        return cast(dict[str, Any], self._json("GET", f"/jobs/{name}/logs"))

    # --- manifests -----------------------------------------------------------------------------

    def apply(
        self, manifests: str | bytes | Sequence[Mapping[str, Any]], dry_run: bool = False
    ) -> ApplyReply:
        """`POST /apply`: YAML text, or objects sent as JSON. A 409 carries `body["results"]`."""
        params = {"dryRun": "true" if dry_run else None}
        if isinstance(manifests, str | bytes):
            content = manifests.encode() if isinstance(manifests, str) else manifests
            return cast(ApplyReply, self._json(
                "POST", "/apply", content=content, params=params,
                headers={"Content-Type": "application/yaml"}))
        return cast(ApplyReply, self._json("POST", "/apply", json={"items": list(manifests)},
                                           params=params))

    def list_manifests(self, limit: int | None = None, cursor: str | None = None) -> Page:
        """`GET /manifests`: the watched directory's files."""
        return cast(Page, self._json("GET", "/manifests", params={"limit": limit, "cursor": cursor}))

    # --- nodes and the worker protocol ---------------------------------------------------------

    def list_nodes(self, status: str | None = None, limit: int | None = None,
                   cursor: str | None = None) -> Page:
        """`GET /nodes`: one page."""
        return cast(Page, self._json("GET", "/nodes", params={
            "status": status, "limit": limit, "cursor": cursor}))

    def get_node(self, name: str) -> Node:
        """`GET /nodes/{name}`."""
        return cast(Node, self._json("GET", f"/nodes/{name}"))

    def delete_node(self, name: str) -> None:
        """`DELETE /nodes/{name}`."""
        self._call("DELETE", f"/nodes/{name}")

    def heartbeat(
        self, node: str, slots: int | None = None, labels: Mapping[str, str] | None = None,
        running: Sequence[tuple[str, int]] | None = None, wait_seconds: float = 0.0,
        draining: bool = False,
    ) -> HeartbeatReply:
        """`POST /nodes/{node}/heartbeat`; `wait_seconds` > 0 long-polls for work.

        `draining`: the worker takes no new work (see the route); holding nothing, it leaves.
        """
        body, params, timeout = heartbeat_request(slots, labels, running, wait_seconds, draining)
        return cast(HeartbeatReply, self._json("POST", f"/nodes/{node}/heartbeat", json=body,
                                               params=params, timeout=timeout))

    def report(
        self, job: str, attempt: int, state: ReportState, exit_code: int | None = None,
        message: str | None = None, log_tail: str | None = None,
        result: Mapping[str, Any] | None = None, reason: str | None = None, node: str | None = None,
    ) -> ReportReply:
        """`POST /jobs/{job}/attempts/{attempt}`; a stale attempt raises ApiError 409."""
        body = report_body(state, exit_code, message, log_tail, result, reason, node)
        return cast(ReportReply, self._json("POST", f"/jobs/{job}/attempts/{attempt}", json=body))

    def reports(self, node: str, reports: Sequence[Mapping[str, Any]]) -> ReportsReply:
        """`POST /nodes/{node}/reports`: several reports (`attempt_report` items), applied in order.

        A refused report (stale, unknown job) is an `error` in its result, not an ApiError.
        """
        return cast(ReportsReply, self._json("POST", f"/nodes/{node}/reports",
                                             json={"reports": list(reports)}))

    # --- queue, audit, tokens, probes ----------------------------------------------------------

    def queue_stats(self) -> QueueStats:
        """`GET /queue/stats`."""
        return cast(QueueStats, self._json("GET", "/queue/stats"))

    def audit(
        self, entity_type: str | None = None, entity_id: str | None = None,
        event_type: str | None = None, since: datetime | str | None = None,
        limit: int | None = None, cursor: str | None = None,
    ) -> Page:
        """`GET /audit`: one page, oldest first."""
        when = since.isoformat() if isinstance(since, datetime) else since
        return cast(Page, self._json("GET", "/audit", params={
            "entityType": entity_type, "entityId": entity_id, "eventType": event_type,
            "since": when, "limit": limit, "cursor": cursor}))

    def create_token(
        self, client_id: str, role: str, node: str | None = None,
        expires_minutes: float | None = None,
    ) -> TokenCreated:
        """`POST /auth/tokens` (admin)."""
        body: dict[str, Any] = {"clientId": client_id, "role": role}
        if node is not None:
            body["node"] = node
        if expires_minutes is not None:
            body["expiresMinutes"] = expires_minutes
        return cast(TokenCreated, self._json("POST", "/auth/tokens", json=body))

    def list_tokens(self, client_id: str | None = None, limit: int | None = None,
                    cursor: str | None = None) -> Page:
        """`GET /auth/tokens` (admin)."""
        return cast(Page, self._json("GET", "/auth/tokens", params={
            "clientId": client_id, "limit": limit, "cursor": cursor}))

    def revoke_token(self, token_id: str) -> None:
        """`DELETE /auth/tokens/{id}` (admin)."""
        self._call("DELETE", f"/auth/tokens/{token_id}")

    def healthz(self) -> dict[str, Any]:
        """`GET /healthz`."""
        return cast(dict[str, Any], self._json("GET", "/healthz"))

    def readyz(self) -> dict[str, Any]:
        """`GET /readyz` (a 503 raises ApiError with the details in `body`)."""
        return cast(dict[str, Any], self._json("GET", "/readyz"))

    def metrics(self) -> str:
        """`GET /metrics` (Prometheus text)."""
        return self._call("GET", "/metrics").text

    def openapi(self) -> dict[str, Any]:
        """`GET /openapi.json`."""
        return cast(dict[str, Any], self._json("GET", "/openapi.json"))
