"""Wake-ups between replicas: PostgreSQL LISTEN/NOTIFY on one channel.

An idle worker long-polls the replica it talks to; work may be submitted through
another replica, or bound to it by the leader's pass. Each replica publishes such
events on the channel `ffrtmp_work` and listens to the others': the payload is the
publishing replica's identity and, for jobs bound by a pass, the nodes concerned.
A replica ignores its own events (it woke its waiters already).

Publishing is coalesced: a burst of changes sends one notification, at most one every
`PUBLISH_EVERY_SECONDS`. A lost notification (the listener reconnecting) costs only
latency: the worker beats again within its heartbeat interval, as without this.
On SQLite there is one controller and nothing to do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger("controller.store")

CHANNEL = "ffrtmp_work"
PUBLISH_EVERY_SECONDS = 0.005
RECONNECT_SECONDS = 1.0
MAX_PAYLOAD = 7000  # PostgreSQL's limit is 8000 bytes


def _dsn(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeFeed:
    """Publishes this replica's wake-ups and delivers the other replicas' (PostgreSQL)."""

    def __init__(
        self,
        url: str,
        identity: str,
        on_changed: Callable[[], None],
        on_bound: Callable[[Iterable[str]], None],
    ) -> None:
        self._dsn = _dsn(url)
        self.identity = identity
        self.on_changed = on_changed
        self.on_bound = on_bound
        self._pending_change = False
        self._pending_nodes: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.received = 0

    def start(self) -> None:
        """Start the publisher and the listener threads."""
        loops = ((self._publish_loop, "ffrtmp-notify-out"), (self._listen_loop, "ffrtmp-notify-in"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def changed(self) -> None:
        """Something that may be work changed here (from any thread)."""
        with self._lock:
            self._pending_change = True
        self._wake.set()

    def bound(self, nodes: Iterable[str]) -> None:
        """The pass bound jobs to these nodes (from any thread)."""
        with self._lock:
            self._pending_nodes.update(nodes)
        self._wake.set()

    # --- threads -------------------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self._dsn, autocommit=True)

    def _publish_loop(self) -> None:
        connection = None
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                break
            with self._lock:
                change, nodes = self._pending_change, sorted(self._pending_nodes)
                self._pending_change, self._pending_nodes = False, set()
            payloads = self._payloads(change, nodes)
            try:
                if connection is None or connection.closed:
                    connection = self._connect()
                for payload in payloads:
                    connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except Exception as exc:  # the listeners then learn at the workers' next beat
                log.warning("[Leader] Cannot notify the other replicas: %s", exc)
                with contextlib.suppress(Exception):
                    if connection is not None:
                        connection.close()
                connection = None
            self._stopping.wait(PUBLISH_EVERY_SECONDS)
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _payloads(self, change: bool, nodes: list[str]) -> list[str]:
        out: list[str] = []
        if change:
            out.append(f"{self.identity} changed")
        chunk: list[str] = []
        for node in nodes:
            chunk.append(node)
            if sum(len(n) + 1 for n in chunk) > MAX_PAYLOAD:
                out.append(f"{self.identity} bound {','.join(chunk)}")
                chunk = []
        if chunk:
            out.append(f"{self.identity} bound {','.join(chunk)}")
        return out

    def _listen_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._connect() as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    while not self._stopping.is_set():
                        for note in connection.notifies(timeout=0.5, stop_after=64):
                            self._deliver(note.payload)
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning("[Leader] Listening to the other replicas failed, again in %g s: %s",
                            RECONNECT_SECONDS, exc)
                self._stopping.wait(RECONNECT_SECONDS)

    def _deliver(self, payload: str) -> None:
        sender, _, rest = payload.partition(" ")
        if sender == self.identity:
            return
        self.received += 1
        kind, _, names = rest.partition(" ")
        if kind == "changed":
            self.on_changed()
        elif kind == "bound" and names:
            self.on_bound(names.split(","))
