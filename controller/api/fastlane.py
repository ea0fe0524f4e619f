"""A short way through the stack for the most frequent request: a worker's heartbeat.

Every worker beats every few seconds; 1,000 workers are hundreds of beats a second,
most of them from idle workers with nothing to start. FastAPI's routing, dependency
resolution and exception middleware cost several times what such a beat needs once
its token is checked. This ASGI middleware, inside authentication and the body limit,
recognizes `POST /nodes/{name}/heartbeat` with a well-formed JSON body and nothing
unusual in its query, parses the body with the route's own model and answers with
the route's own function (`routes_nodes.answer_heartbeat`): same rules, same answer.

Anything else, and anything that fails on the way (a body the model refuses, a
forbidden node, an unknown node with auto-registration off, an error), is passed to
the application with the body replayed, so that the route answers it exactly as it
would have: a beat is idempotent, so doing it again there is safe.
"""

from __future__ import annotations

import logging
import math
import re
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.api.context import ApiContext
from controller.api.routes_nodes import answer_heartbeat
from controller.api.schemas import HeartbeatIn
from controller.api.security import PRINCIPAL
from controller.auth.roles import Principal
from controller.manifests.schema import NAME_MAX, NAME_PATTERN

log = logging.getLogger("controller.api")

_PATH = re.compile(f"^/nodes/({NAME_PATTERN})/heartbeat$")
_JSON = (b"application/json",)


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


class HeartbeatLane:
    """Answers plain heartbeats itself; passes everything else to `app`."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Take a plain heartbeat, or hand the request on untouched."""
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        found = _PATH.match(scope["path"])
        principal = scope.get("state", {}).get(PRINCIPAL)
        wait = _wait_seconds(scope.get("query_string", b""))
        if (found is None or len(found.group(1)) > NAME_MAX or not isinstance(principal, Principal)
                or wait is None or not self._json(scope)):
            await self.app(scope, receive, send)
            return
        body, messages = await self._read(receive)
        try:
            beat = HeartbeatIn.model_validate_json(body)
            response = await answer_heartbeat(self.ctx, found.group(1), beat, principal, wait, False)
        except Exception as exc:  # ValidationError included
            # The route answers (a 4xx for a bad request): it knows the error format.
            log.debug("[API] heartbeat passed on to the route: %s", exc)
            await self.app(scope, self._replay(messages, receive), send)
            return
        await response(scope, receive, send)

    @staticmethod
    def _json(scope: Scope) -> bool:
        for key, value in scope.get("headers", ()):
            if key == b"content-type":
                return value.split(b";")[0].strip().lower() in _JSON
        return False

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
