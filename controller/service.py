"""The controller process: the API, the reconcile loop and the desired-state source, together.

`ControllerService(config, source)` wires the pieces (the imperative shell):

- the store, upgraded to the newest schema at start (`controller.started` audited);
- the `Farm`, whose `on_change` wakes both the reconcile loop and the long-polls, and
  whose `on_handout` (a heartbeat took work) wakes the next idle long-poll only;
- the `Reconciler` in a `ReconcileLoop`, whose passes feed the metrics and wake the
  long-polls of the nodes they bound jobs to;
- the FastAPI app on uvicorn (TLS when given a certificate and key);
- the `LeaderElector`: several replicas may share one PostgreSQL database; all of
  them serve the API (heartbeats and reports included), only the holder of the
  `reconciler` lease runs the reconcile pass and watches the manifests directory,
  and its writes go through a `FencedStore` (they commit only while the lease is
  held with its epoch). A lone controller, and any controller on SQLite, leads from
  its start.

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
from controller.leader import LeaderElector, Leadership
from controller.loop import ReconcileLoop
from controller.observability.metrics import Metrics
from controller.reconcile import PassResult, Reconciler
from controller.sources.directory import DirectorySource
from controller.store import migrate, views
from controller.store.audit import write_audit
from controller.store.engine import Store
from controller.store.leases import Fence, FencedStore
from controller.store.notify import ChangeFeed

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
        election = config.leader_election
        self.elector = LeaderElector(
            self.store, election,
            on_started=self._on_started_leading, on_stopped=self._on_stopped_leading,
            # SQLite is one machine: a restart after a crash must not wait out its own old lease.
            take_over_at_start=self.store.dialect == "sqlite",
            clock=clock,
        )
        # The pass and the watched directory write on behalf of the leader: fenced by the epoch.
        self.leader_store = FencedStore(self.store, self.elector.fence, self.elector.fence_failed,
                                        idle_limit_seconds=election.lease_duration_seconds)
        if source is None and watch_manifests:
            # The watched directory (`manifests.dir`); a missing directory declares nothing.
            source = DirectorySource(self.leader_store, config, on_change=self._on_change,
                                     metrics=self.metrics, clock=clock)
        self.source = source
        self._source_running = False
        self._full_resync = False
        self._leading_lock = threading.Lock()
        self.notifier = WorkNotifier()
        self.auth = AuthManager(self.store, config.auth, self.metrics)
        # Several replicas on PostgreSQL: wake-ups cross to the others' long-polls.
        self.feed = (
            ChangeFeed(config.database.url, self.elector.identity,
                       on_changed=self.notifier.changed, on_bound=self.notifier.nodes_bound)
            if self.store.dialect == "postgresql" else None
        )
        self.farm = Farm(self.store, config, on_change=self._on_change, clock=clock,
                         on_started=self._on_started, on_handout=self._on_handout,
                         on_freed=self._on_freed)
        self.started_at = clock()
        self.reconciler = Reconciler(
            self.leader_store, config, self.started_at,
            desired_state=self._sync_desired_state if source is not None else None,
            on_pass=self._on_pass,
        )
        self.loop = ReconcileLoop(self.reconciler, config.fault_tolerance.check_interval_seconds,
                                  clock=clock, leading=self.elector.is_leader)
        self._stopping = False
        self._server: _Server | None = None
        self.app = create_app(self.farm, self.auth, self.metrics, self.notifier,
                              stopping=lambda: self._stopping, clock=clock,
                              leader=self.elector.is_leader)

    # --- wiring ---------------------------------------------------------------------------

    def _on_change(self) -> None:
        self.loop.wake()
        self._on_handout()

    def _on_handout(self) -> None:
        self.notifier.changed()
        if self.feed is not None:
            self.feed.changed()

    def _on_freed(self, node: str) -> None:
        self.notifier.nodes_bound((node,))
        if self.feed is not None:
            self.feed.bound((node,))

    def _on_started(self, job: str, created_at: datetime, started_at: datetime) -> None:
        self.metrics.submit_to_start.observe(max(0.0, (started_at - created_at).total_seconds()))

    def _sync_desired_state(self, now: datetime) -> object:
        assert self.source is not None
        force, self._full_resync = self._full_resync, False
        if force and isinstance(self.source, DirectorySource):
            # A new leadership: another replica may have applied other revisions meanwhile.
            return self.source.sync(now, force=True)
        return self.source.sync(now)

    def _on_started_leading(self, leadership: Leadership) -> None:
        """Lead: the start-time grace from now, the watched directory, a pass at once."""
        self.reconciler.lead_from(self.clock())
        with self._leading_lock:
            self._full_resync = True
            if self.source is not None and not self._source_running and not self._stopping:
                self.source.start()
                self._source_running = True
        self.metrics.leader.set(1)
        self.loop.wake()

    def _on_stopped_leading(self, fence: Fence, why: str) -> None:
        """Stop watching the directory; the loop skips passes until this replica leads again."""
        self.metrics.leader.set(0)
        self._stop_source()

    def _stop_source(self) -> None:
        with self._leading_lock:
            running, self._source_running = self._source_running, False
        if running and self.source is not None:
            self.source.stop()

    def _on_pass(self, result: PassResult) -> None:
        if result.scheduled:
            bound = {node for _, node in result.scheduled}
            self.notifier.nodes_bound(bound)
            if self.feed is not None:
                self.feed.bound(bound)
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
        """Upgrade the schema, audit the start, join the leader election, start the reconcile loop.

        The first election round runs here: a free lease (always, on SQLite) is led
        before the first pass, and the source starts with the leadership.
        """
        migrate.upgrade(self.store)
        self.store.start_checkpoints(self.config.database.sqlite_checkpoint_seconds)
        now = self.clock()
        with self.store.write() as session:
            write_audit(session, "controller.started", "controller", "controller",
                        {"version": __version__, "pid": os.getpid()}, now)
        self.metrics.auth_tokens.set(self.auth.count_active_tokens(now=now))
        # Readiness probes read the schema revision; alembic would log each of them.
        logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
        log.info("[Controller] Started ffrtmp %s (database %s, schema %s, identity %s)", __version__,
                 self.store.dialect, migrate.current_revision(self.store), self.elector.identity)
        if self.feed is not None:
            self.feed.start()
        self.auth.start()
        self.elector.start()
        self.loop.start()

    def begin_shutdown(self) -> None:
        """Stop answering ready and release every long-poll (safe from a signal handler)."""
        if not self._stopping:
            log.info("[Controller] Shutting down: finishing requests and the pass in flight")
        self._stopping = True
        self.notifier.close()

    def stop(self) -> None:
        """Let the pass in flight finish, stop the loop, give the lease up, close the store."""
        self.begin_shutdown()
        self.loop.stop()
        self.auth.stop()
        self.farm.close()
        if self.feed is not None:
            self.feed.stop()
        self.elector.stop(release=True)
        self._stop_source()
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
