"""The request body limit (`server.maxBodyBytes`): 413, chunked bodies included.

A pure ASGI middleware that counts the bytes it hands to the application, so a
body sent without `Content-Length` (chunked) is stopped as soon as it crosses the
limit, and a declared length over the limit is refused before a byte is read.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.api.asgi import header
from controller.api.errors import error_response


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body crosses the limit (the app maps it to 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (server.maxBodyBytes)")


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then count what is received."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await error_response(413, BodyTooLarge(self.max_bytes).detail)(scope, receive, send)
                return
            # The server reads no more than the declared length: nothing left to count.
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:
            # Raised where no handler caught it (outside a route): answer here if we still can.
            if started:
                raise
            await error_response(413, exc.detail)(scope, receive, send)

