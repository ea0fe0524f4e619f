"""The worker protocol's calls on the standard library's HTTP client.

A worker makes a few requests per job (the heartbeat that hands it out, its reports,
the beat after). Through httpx each cost
the worker about 0.9 ms of CPU; on `http.client` over kept-alive connections about
0.3 ms, and on a farm of no-op or short jobs the workers share the machine with the
controller. `WorkerClient` offers `heartbeat`, `report` and `reports` with the signatures,
answers and errors (`ApiError`) of `controller.client.Client`, which the CLI keeps
using for everything else.

Connections are kept in a small pool shared by the worker's threads (the heartbeat
loop and the reporter). A request that fails on a connection that was
idle in the pool (the controller closes idle connections after a few seconds) is
sent once more on a new one: every call is idempotent (a report is fenced by its
attempt, a heartbeat states the whole truth each time), so a repeat is safe.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

from controller.client import (
    DEFAULT_TIMEOUT,
    ApiError,
    HeartbeatReply,
    ReportReply,
    ReportsReply,
    ReportState,
    api_error,
    heartbeat_request,
    report_body,
    resolve,
)

POOL_SIZE = 8
"""Idle connections kept for reuse (more are opened when more threads call at once)."""


class WorkerClient:
    """A worker's calls: `POST /nodes/{name}/heartbeat`, `.../reports`, `/jobs/{name}/attempts/{n}`."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.server, token = resolve(server, token)
        parts = urlsplit(self.server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{server!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._context = context if context is not None else (
            ssl.create_default_context() if self._https else None
        )
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # --- the protocol --------------------------------------------------------------------------

    def heartbeat(
        self, node: str, slots: int | None = None, labels: Mapping[str, str] | None = None,
        running: Sequence[tuple[str, int]] | None = None, wait_seconds: float = 0.0,
        draining: bool = False,
    ) -> HeartbeatReply:
        """As `Client.heartbeat`."""
        body, params, timeout = heartbeat_request(slots, labels, running, wait_seconds, draining)
        path = f"/nodes/{quote(node, safe='')}/heartbeat"
        if params:
            path += "?" + urlencode(params)
        return cast(HeartbeatReply, self._post(path, body, timeout))

    def report(
        self, job: str, attempt: int, state: ReportState, exit_code: int | None = None,
        message: str | None = None, log_tail: str | None = None,
        result: Mapping[str, Any] | None = None, reason: str | None = None, node: str | None = None,
    ) -> ReportReply:
        """As `Client.report`."""
        body = report_body(state, exit_code, message, log_tail, result, reason, node)
        return cast(ReportReply, self._post(f"/jobs/{quote(job, safe='')}/attempts/{int(attempt)}", body))

    def reports(self, node: str, reports: Sequence[Mapping[str, Any]]) -> ReportsReply:
        """As `Client.reports`."""
        return cast(ReportsReply, self._post(f"/nodes/{quote(node, safe='')}/reports",
                                             {"reports": list(reports)}))

    # --- HTTP ----------------------------------------------------------------------------------

    def _post(self, path: str, body: Mapping[str, Any], timeout: float | None = None) -> Any:
        payload = json.dumps(body, separators=(",", ":")).encode()
        seconds = timeout if timeout is not None else self.timeout
        connection: http.client.HTTPConnection | None = None
        try:
            connection, reused = self._take()
            try:
                status, reason, content, retry_after = self._exchange(connection, path, payload, seconds)
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                if not reused:
                    raise
                # Closed by the controller while idle in the pool: once more on a new connection.
                connection.close()
                connection = self._new()
                status, reason, content, retry_after = self._exchange(connection, path, payload, seconds)
        except TimeoutError as exc:
            if connection is not None:
                connection.close()
            raise ApiError(0, "Timeout", f"{self.server}: no answer in time ({exc})") from exc
        except (OSError, http.client.HTTPException) as exc:
            if connection is not None:
                connection.close()
            raise ApiError(0, "Unreachable", f"{self.server}: {exc or type(exc).__name__}") from exc
        self._give(connection)
        if status >= 400:
            raise api_error(status, content, reason, retry_after)
        try:
            return json.loads(content)
        except ValueError as exc:
            raise ApiError(status, "BadAnswer", f"{self.server}: the answer is not JSON") from exc

    def _exchange(
        self, connection: http.client.HTTPConnection, path: str, payload: bytes, timeout: float
    ) -> tuple[int, str, bytes, str | None]:
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.request("POST", self._prefix + path, body=payload, headers=self._headers)
        response = connection.getresponse()
        content = response.read()
        if response.will_close:
            connection.close()  # the next request on it reconnects
        return response.status, response.reason, content, response.getheader("Retry-After")

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(), False

    def _give(self, connection: http.client.HTTPConnection) -> None:
        if connection.sock is None:
            return  # closed by the answer ("Connection: close"): the next request opens its own
        with self._lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(connection)
                return
        connection.close()

    def _new(self) -> http.client.HTTPConnection:
        connection = (
            http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._context)
            if self._https else http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        )
        connection.connect()
        # Small requests and answers: each sent at once, not held back for an ACK (Nagle).
        if connection.sock is not None:
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection
