"""Leader election among controller replicas, by a lease row in the database.

Every replica runs a `LeaderElector`. Every `retryPeriodSeconds` the leader renews
the lease and the others try to acquire it; they succeed once it was not renewed
for `leaseDurationSeconds` (measured by the database's clock on PostgreSQL, see
`controller.store.leases`). The leader stops leading on its own when it could not
renew for `renewDeadlineSeconds` (measured by its monotonic clock from the start of
its last successful renewal, so it stops before anyone may take over, whatever the
wall clocks say), or at once when a renewal or a fenced write finds the lease taken.

Leading is a promise about time, which a paused process can't keep; the epoch fence
(`FencedStore`) is what makes a late leader harmless: its writes fail.

`step()` is one round (acquire or renew) and takes no thread; `start()` runs rounds
in a background thread. Changes of leadership call `on_started(leadership)` and
`on_stopped(fence, why)`, are logged (`[Leader] ...`) and audited
(`controller.leader_acquired`, `controller.leader_lost`).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from controller.config import LeaderElectionConfig
from controller.store import leases
from controller.store.audit import write_audit
from controller.store.engine import Store
from controller.store.leases import Fence

log = logging.getLogger("controller.leader")


def default_identity() -> str:
    """`host-pid-random`: unique per process, so a restart is a new holder."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Leadership:
    """This replica leads: its fence, and since when (this replica's clock)."""

    fence: Fence
    since: datetime
    previous_holder: str | None


class LeaderElector:
    """Acquires, renews and gives up one lease for this replica (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        config: LeaderElectionConfig,
        identity: str | None = None,
        *,
        name: str = leases.RECONCILER_LEASE,
        on_started: Callable[[Leadership], None] | None = None,
        on_stopped: Callable[[Fence, str], None] | None = None,
        take_over_at_start: bool = False,
        lease_clock: Callable[[Session], datetime] = leases.database_now,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.config = config
        self.identity = identity or config.identity or default_identity()
        self.name = name
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.take_over_at_start = take_over_at_start
        self.lease_clock = lease_clock
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.RLock()
        self._leadership: Leadership | None = None
        self._renewed: float = 0.0
        """Monotonic start of the last successful acquisition or renewal."""
        self._rounds = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.transitions = 0
        """How often leadership changed here (gained or lost), for tests and logs."""

    # --- what others ask ------------------------------------------------------------------------

    def fence(self) -> Fence | None:
        """The fence while this replica leads and is within its renew deadline, else None."""
        with self._lock:
            if self._leadership is None:
                return None
            if self.monotonic() - self._renewed > self.config.renew_deadline_seconds:
                return None
            return self._leadership.fence

    def is_leader(self) -> bool:
        """True while this replica leads (see `fence`)."""
        return self.fence() is not None

    @property
    def leadership(self) -> Leadership | None:
        """The current leadership, if any (even past the renew deadline, until noticed)."""
        return self._leadership

    def fence_failed(self, fence: Fence) -> None:
        """A fenced write found the lease taken: stop leading now (if still on that epoch)."""
        self._lose(fence, "a fenced write found the lease taken over")

    # --- one round ------------------------------------------------------------------------------

    def step(self) -> bool:
        """One round: renew when leading, else try to acquire. True when leading afterwards."""
        with self._lock:
            leading = self._leadership
        if leading is None:
            self._acquire()
        else:
            self._renew(leading.fence)
        self._rounds += 1
        return self.is_leader()

    def _bound(self, session: Session) -> None:
        leases.bound_waits(session, self.config.retry_period_seconds)

    def _acquire(self) -> None:
        began = self.monotonic()
        take_over = self.take_over_at_start and self._rounds == 0
        try:
            with self.store.write() as session:
                self._bound(session)
                now = self.lease_clock(session)
                got = leases.try_acquire(session, self.name, self.identity, now,
                                         self.config.lease_duration_seconds, take_over=take_over)
                if got is not None:
                    previous = got.previous
                    write_audit(
                        session, "controller.leader_acquired", "controller", self.name,
                        {"holder": self.identity, "epoch": got.lease.epoch,
                         "previousHolder": previous.holder if previous else None,
                         "previousEpoch": previous.epoch if previous else None,
                         "previousExpired": bool(previous and previous.expired(now)),
                         "expiresAt": got.lease.expires_at.isoformat()},
                        self.clock(),
                    )
        except SQLAlchemyError as exc:
            log.debug("[Leader] Could not try the lease: %s", exc)
            return
        if got is None:
            return
        previous_holder = got.previous.holder if got.previous else None
        leadership = Leadership(got.lease.fence, self.clock(), previous_holder)
        with self._lock:
            self._leadership = leadership
            self._renewed = began
            self.transitions += 1
        taken = f"; took over from {previous_holder}" if previous_holder not in (None, self.identity) else ""
        log.info("[Leader] %s is now the leader (lease %s, epoch %d%s)",
                 self.identity, self.name, got.lease.epoch, taken)
        if self.on_started is not None:
            self.on_started(leadership)

    def _renew(self, fence: Fence) -> None:
        began = self.monotonic()
        try:
            with self.store.write() as session:
                self._bound(session)
                renewed = leases.renew(session, fence, self.lease_clock(session),
                                       self.config.lease_duration_seconds)
        except SQLAlchemyError as exc:
            if self.monotonic() - self._renewed > self.config.renew_deadline_seconds:
                self._lose(fence, f"could not renew within {self.config.renew_deadline_seconds:g}s ({exc})")
            else:
                log.warning("[Leader] Could not renew the lease (will retry): %s", exc)
            return
        if renewed is None:
            self._lose(fence, "the lease was taken over")
            return
        with self._lock:
            if self._leadership is not None and self._leadership.fence == fence:
                if began - self._renewed > self.config.renew_deadline_seconds:
                    # Renewed late (paused?): fenced writes in between failed; lead on from here.
                    log.warning("[Leader] Renewed the lease %.1fs after the last renewal",
                                began - self._renewed)
                self._renewed = began

    def _lose(self, fence: Fence, why: str) -> None:
        with self._lock:
            if self._leadership is None or self._leadership.fence != fence:
                return
            self._leadership = None
            self.transitions += 1
        log.warning("[Leader] %s stopped leading (lease %s, epoch %d): %s",
                    self.identity, fence.name, fence.epoch, why)
        self._audit_lost(fence, why)
        if self.on_stopped is not None:
            self.on_stopped(fence, why)

    def _audit_lost(self, fence: Fence, why: str) -> None:
        """Best effort: the database may be what failed."""
        try:
            with self.store.write() as session:
                self._bound(session)
                write_audit(session, "controller.leader_lost", "controller", fence.name,
                            {"holder": fence.holder, "epoch": fence.epoch, "why": why}, self.clock())
        except SQLAlchemyError as exc:
            log.debug("[Leader] Could not audit the loss of the lease: %s", exc)

    # --- the thread -----------------------------------------------------------------------------

    def start(self) -> None:
        """One round now (a free lease is led at once), then rounds every `retryPeriodSeconds`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self.step()
        self._thread = threading.Thread(target=self._run, name="ffrtmp-leader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.config.retry_period_seconds):
            try:
                self.step()
            except Exception as exc:  # the elector must outlive any one bad round
                log.exception("[Leader] Election round failed: %s", exc)

    def stop(self, release: bool = True) -> None:
        """Stop the rounds; when leading, give the lease up so another replica leads at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._lock:
            leading = self._leadership
        if leading is None:
            return
        if release:
            try:
                with self.store.write() as session:
                    self._bound(session)
                    leases.release(session, leading.fence, self.lease_clock(session))
            except SQLAlchemyError as exc:
                log.warning("[Leader] Could not release the lease: %s", exc)
        self._lose(leading.fence, "released at shutdown" if release else "stopped")
