"""The controller process: the API, the reconcile loop and the desired-state source, together.

`ControllerService(config, source)` wires the pieces (the imperative shell):

- the store, upgraded to the newest schema at start (`controller.started` audited);
- the `Farm`, whose `on_change` wakes both the reconcile loop and the long-polls;
- the `Reconciler` in a `ReconcileLoop`, whose passes feed the metrics and wake the
  long-polls of the nodes they bound jobs to;
- the FastAPI app on uvicorn (TLS when given a certificate and key).

On SIGTERM (or SIGINT) it stops accepting connections, releases the long-polls,
lets the requests and the reconcile pass in flight finish, stops the loop and the
source, and returns 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Protocol

import uvicorn

from controller import __version__
from controller.api import WorkNotifier, create_app
from controller.auth.manager import AuthManager
from controller.config import ControllerConfig
from controller.farm import Farm
from controller.loop import ReconcileLoop
from controller.observability.metrics import Metrics
from controller.reconcile import PassResult, Reconciler
from controller.sources.directory import DirectorySource
from controller.store import migrate, views
from controller.store.audit import write_audit
from controller.store.engine import Store

log = logging.getLogger("controller.service")

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SHUTDOWN_GRACE_SECONDS = 15
"""Longest wait for requests in flight at shutdown (long-polls are released at once)."""


class DesiredStateSource(Protocol):
    """Where desired state comes from besides the API (the watched directory).

    `sync(now)` runs at the start of every reconcile pass (step 1: apply pending
    changes, prune); `start()` begins watching, `stop()` ends it.
    """

    def start(self) -> None:
        """Begin watching (called once, before the first pass)."""

    def stop(self) -> None:
        """Stop watching (called once, after the last pass)."""

    def sync(self, now: datetime) -> object:
        """Apply what changed since the last call (the result is for logs and tests)."""


@dataclass(frozen=True)
class ServeOptions:
    """Where and how to listen."""

    host: str
    port: int
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def scheme(self) -> str:
        """`https` with a certificate, else `http`."""
        return "https" if self.tls_cert else "http"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the service when a signal asks it to stop."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then log the address (the line tests and scripts wait for)."""
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            for sock in sockets or ():
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                scheme = "https" if self.config.ssl_certfile else "http"
                log.info("[API] Listening on %s://%s:%d", scheme, shown, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Release the long-polls first, so the graceful shutdown does not wait for them."""
        self._on_exit()
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Like uvicorn's, without re-raising the signal afterwards.

        uvicorn re-raises SIGTERM once it has shut down, which would kill the process
        before the reconcile loop stops and turn a clean stop into exit status -15.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class ControllerService:
    """One controller process."""

    def __init__(
        self,
        config: ControllerConfig,
        source: DesiredStateSource | None = None,
        clock: Callable[[], datetime] = _utcnow,
        store: Store | None = None,
        watch_manifests: bool = True,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store if store is not None else Store.from_config(config.database)
        self.metrics = Metrics()
        if source is None and watch_manifests:
            # The watched directory (`manifests.dir`); a missing directory declares nothing.
            source = DirectorySource(self.store, config, on_change=self._on_change,
                                     metrics=self.metrics, clock=clock)
        self.source = source
        self.notifier = WorkNotifier()
        self.auth = AuthManager(self.store, config.auth, self.metrics)
        self.farm = Farm(self.store, config, on_change=self._on_change, clock=clock,
                         on_started=self._on_started)
        self.started_at = clock()
        self.reconciler = Reconciler(
            self.store, config, self.started_at,
            desired_state=source.sync if source is not None else None,
            on_pass=self._on_pass,
        )
        self.loop = ReconcileLoop(self.reconciler, config.fault_tolerance.check_interval_seconds,
                                  clock=clock)
        self._stopping = False
        self._server: _Server | None = None
        self.app = create_app(self.farm, self.auth, self.metrics, self.notifier,
                              stopping=lambda: self._stopping, clock=clock)

    # --- wiring ---------------------------------------------------------------------------

    def _on_change(self) -> None:
        self.loop.wake()
        self.notifier.changed()

    def _on_started(self, job: str, created_at: datetime, started_at: datetime) -> None:
        self.metrics.submit_to_start.observe(max(0.0, (started_at - created_at).total_seconds()))

    def _on_pass(self, result: PassResult) -> None:
        if result.scheduled:
            self.notifier.nodes_bound(node for _, node in result.scheduled)
        m = self.metrics
        m.dead_nodes.inc(len(result.dead_nodes))
        m.reassigned_jobs.inc(len(result.requeued))
        m.failed_jobs.inc(len(result.failed))
        m.reconcile_duration.observe(result.seconds)
        with self.store.read() as session:
            pending = views.pending_by_priority(session)
        m.set_pending(pending)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Upgrade the schema, audit the start, start the source and the reconcile loop."""
        migrate.upgrade(self.store)
        now = self.clock()
        with self.store.write() as session:
            write_audit(session, "controller.started", "controller", "controller",
                        {"version": __version__, "pid": os.getpid()}, now)
        self.metrics.auth_tokens.set(self.auth.count_active_tokens(now=now))
        # Readiness probes read the schema revision; alembic would log each of them.
        logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
        log.info("[Controller] Started ffrtmp %s (database %s, schema %s)", __version__,
                 self.store.dialect, migrate.current_revision(self.store))
        if self.source is not None:
            self.source.start()
        self.loop.start()

    def begin_shutdown(self) -> None:
        """Stop answering ready and release every long-poll (safe from a signal handler)."""
        if not self._stopping:
            log.info("[Controller] Shutting down: finishing requests and the pass in flight")
        self._stopping = True
        self.notifier.close()

    def stop(self) -> None:
        """Let the pass in flight finish, stop the loop and the source, close the store."""
        self.begin_shutdown()
        self.loop.stop()
        if self.source is not None:
            self.source.stop()
        log.info("[Controller] Stopped after %d reconcile passes", self.loop.passes)
        self.store.dispose()

    def request_exit(self) -> None:
        """Ask a serving controller to stop, as SIGTERM does (from any thread)."""
        self.begin_shutdown()
        if self._server is not None:
            self._server.should_exit = True

    def serve(self, options: ServeOptions) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status (0 after a clean stop)."""
        sock = _bind(options.host, options.port)
        server = _Server(
            uvicorn.Config(
                self.app, log_config=None, access_log=False, lifespan="off",
                ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            ),
            on_exit=self.begin_shutdown,
        )
        self._server = server
        self.start()
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            self.stop()
        return 0


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: the system picks one; the log line names it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it small answers wait ~40 ms for delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock
