"""A lean HTTP/1.1 load generator on asyncio streams (keep-alive, JSON bodies).

On 2 cores the load generator shares the machine with the controller it measures.
httpx spends ~1 ms of CPU per request (more than the controller spends answering a
heartbeat), so with it the figure was the generator's, not the controller's. This
client writes each request as bytes on a kept-alive connection and reads the status
line, the headers it needs and the body: a few tens of microseconds per request.
It speaks just what the benchmarks send (JSON in, `Content-Length` answers out).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class LoadError(RuntimeError):
    """The connection failed or the answer was not HTTP/1.1 we can read."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: its status and body."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class Connection:
    """One kept-alive connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Answer:
        """Send one request and read its answer (one retry on a connection closed while idle)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(payload)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        if token is not None:
            head.append(f"Authorization: Bearer {token}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        for attempt in (1, 2):
            reader, writer = await self._open()
            try:
                writer.write(message)
                return await self._answer(reader)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.close()
                if attempt == 2:
                    raise LoadError(f"{method} {path}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _answer(self, reader: asyncio.StreamReader) -> Answer:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise LoadError(f"not an HTTP/1.1 answer: {lines[0]!r}")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                raise LoadError("chunked answers are not supported by this load generator")
        body = await reader.readexactly(length) if length else b""
        return Answer(int(parts[1]), body)

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class Pool:
    """Up to `size` kept-alive connections to one server; a request borrows one."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{url}: the load generator speaks plain http://host:port only")
        self._idle: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()
        for _ in range(size):
            self._idle.put_nowait(Connection(parts.hostname, parts.port))
        self._all = list(self._idle._queue)  # type: ignore[attr-defined]

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Answer:
        """One request on a free connection (waits for one when all are busy)."""
        connection = await self._idle.get()
        try:
            return await connection.request(method, path, body, token)
        finally:
            self._idle.put_nowait(connection)

    async def post(self, path: str, body: Any = None, token: str | None = None) -> Answer:
        """POST a JSON body."""
        return await self.request("POST", path, body, token)

    async def get(self, path: str, token: str | None = None) -> Answer:
        """GET."""
        return await self.request("GET", path, None, token)

    def close(self) -> None:
        """Close every connection."""
        for connection in self._all:
            connection.close()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()
