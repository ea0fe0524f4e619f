"""A short way through the stack for the worker protocol: heartbeats and reports.

Every worker beats every few seconds and reports twice per job; 1,000 workers are
hundreds of such requests a second. FastAPI's routing, dependency resolution and
exception middleware cost several times what one of them needs once its token is
checked. This ASGI middleware, inside authentication and the body limit, recognizes
`POST /nodes/{name}/heartbeat` (at most `waitSeconds` in its query) and
`POST /jobs/{name}/attempts/{attempt}` and `POST /nodes/{name}/reports` (no query) with
a JSON body, parses the body with the route's own model and answers with the route's
own function (`routes_nodes.answer_heartbeat`, `answer_report`, `answer_reports`): same
rules, same answers.

Requests it does not recognize, and bodies the model refuses, are passed to the
application with the body replayed, so the route answers them exactly as it would
have. The protocol's own refusals (403, 404, 409) are answered here in the same
error format. Any other error of a heartbeat goes to the route too (a beat is
idempotent); one of reports is answered 500 like the application does (its writes
were rolled back, but they must not be applied twice by a replay).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.api.asgi import header
from controller.api.context import ApiContext
from controller.api.errors import auth_error_response, error_response
from controller.api.routes_jobs import answer_submit
from controller.api.routes_nodes import answer_heartbeat, answer_report, answer_reports
from controller.api.schemas import INT32, HeartbeatIn, JobCreate, ReportIn, ReportsIn
from controller.api.security import PRINCIPAL
from controller.auth.errors import PermissionDenied
from controller.auth.roles import Principal
from controller.farm import FarmError
from controller.manifests.schema import NAME_MAX, NAME_PATTERN

log = logging.getLogger("controller.api")

# Named groups: NAME_PATTERN has groups of its own.
_HEARTBEAT = re.compile(f"^/nodes/(?P<name>{NAME_PATTERN})/heartbeat$")
_REPORT = re.compile(f"^/jobs/(?P<name>{NAME_PATTERN})/attempts/(?P<attempt>[1-9][0-9]{{0,9}})$")
_REPORTS = re.compile(f"^/nodes/(?P<name>{NAME_PATTERN})/reports$")
_JSON = ("application/json",)
M = TypeVar("M", bound=BaseModel)


def _wait_seconds(query: bytes) -> float | None:
    """`waitSeconds` when it is the only parameter and a valid one; else None (the route decides)."""
    if not query:
        return 0.0
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "waitSeconds":
        return None
    try:
        value = float(pairs[0][1])
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


class WorkerLane:
    """Answers plain heartbeats and reports itself; passes everything else to `app`."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Take a plain heartbeat or report, or hand the request on untouched."""
        principal = scope.get("state", {}).get(PRINCIPAL) if scope["type"] == "http" else None
        if scope["type"] != "http" or scope["method"] != "POST" or not isinstance(principal, Principal) \
                or not self._json(scope):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        query: bytes = scope.get("query_string", b"")
        if path.endswith("/heartbeat"):
            beat = _HEARTBEAT.match(path)
            wait = _wait_seconds(query)
            if beat is not None and len(beat["name"]) <= NAME_MAX and wait is not None:
                await self._heartbeat(scope, receive, send, principal, beat["name"], wait)
                return
        elif not query and path.endswith("/reports"):
            batch = _REPORTS.match(path)
            if batch is not None and len(batch["name"]) <= NAME_MAX:
                node = batch["name"]
                await self._answer(scope, receive, send, ReportsIn,
                                   lambda body: answer_reports(self.ctx, node, body, principal))
                return
        elif not query and path == "/jobs":
            await self._answer(scope, receive, send, JobCreate,
                               lambda body: answer_submit(self.ctx, body, principal), status=201)
            return
        elif not query:
            report = _REPORT.match(path)
            if report is not None and len(report["name"]) <= NAME_MAX and int(report["attempt"]) <= INT32:
                job, attempt = report["name"], int(report["attempt"])
                await self._answer(scope, receive, send, ReportIn,
                                   lambda body: answer_report(self.ctx, job, attempt, body, principal))
                return
        await self.app(scope, receive, send)

    async def _heartbeat(self, scope: Scope, receive: Receive, send: Send, principal: Principal,
                         name: str, wait: float) -> None:
        body, messages = await self._read(receive)
        try:
            beat = HeartbeatIn.model_validate_json(body)
            response = await answer_heartbeat(self.ctx, name, beat, principal, wait, False)
        except Exception as exc:  # a refused body, or any error: the route answers it
            log.debug("[API] heartbeat passed on to the route: %s", exc)
            await self.app(scope, self._replay(messages, receive), send)
            return
        await response(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, model: type[M],
                      answer: Callable[[M], Awaitable[BaseModel]], status: int = 200) -> None:
        """Parse the body with `model` and answer it with `answer` (`status` when it succeeds)."""
        body, messages = await self._read(receive)
        try:
            parsed = model.model_validate_json(body)
        except ValidationError as exc:
            log.debug("[API] report passed on to the route: %s", exc)
            await self.app(scope, self._replay(messages, receive), send)
            return
        response: Response
        try:
            out = await answer(parsed)
            response = Response(out.model_dump_json(), status, media_type="application/json")
        except FarmError as exc:
            response = error_response(exc.status_code, str(exc), exc.code)
        except PermissionDenied as exc:
            response = auth_error_response(exc)
        except Exception as exc:  # as the application's own handler answers a bug
            log.exception("[API] Internal error on POST %s: %s", scope["path"], exc)
            response = error_response(500, "internal error (a bug); see the controller log", "InternalError")
        await response(scope, receive, send)

    @staticmethod
    def _json(scope: Scope) -> bool:
        media = header(scope, b"content-type")
        return media is not None and media.split(";")[0].strip().lower() in _JSON

    @staticmethod
    async def _read(receive: Receive) -> tuple[bytes, list[Message]]:
        """The whole body (the body limit still counts it), and the messages to replay."""
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks), messages

    @staticmethod
    def _replay(messages: list[Message], receive: Receive) -> Receive:
        pending = list(messages)

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return replay
