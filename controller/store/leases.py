"""Leases in the database (leader election) and the epoch fence of the leader's writes.

A lease is one row of `leases`: who holds it (`holder`), since when, until when
(`expires_at`), and an `epoch` that grows with every acquisition. Acquiring and
renewing are compare-and-set updates inside the caller's write transaction, so two
candidates never both win: on PostgreSQL the row is locked (`FOR UPDATE`) and the
update is guarded by the epoch read; on SQLite the write transaction holds the
database's write lock (`BEGIN IMMEDIATE`).

Times. Every function takes `now` from the caller. The controller passes
`database_now(session)`: the database's clock on PostgreSQL, so all replicas write
and compare lease times against one clock and the replicas' own clocks may
disagree; the process clock on SQLite (one machine). Tests pass a frozen time.

Fencing. `FencedStore` is a `Store` whose write transactions are made on behalf of
the leader: each one checks, inside the transaction, that the lease is still held
with the epoch the leader acquired, first at the start (to fail fast) and again
just before the commit with a share lock on the lease row (PostgreSQL), so a
takeover either waits for the transaction to commit or makes it fail. A leader
that lost its lease (paused, partitioned, slow) thus commits nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Session

from controller.store.engine import Store
from controller.store.models import Lease

leases_t: sa.Table = Lease.__table__  # type: ignore[attr-defined]

RECONCILER_LEASE = "reconciler"
"""The lease whose holder runs the reconcile pass and the watched directory."""


class NotLeader(RuntimeError):
    """A write on behalf of the leader was attempted by a replica that does not lead."""


class LeaseLost(NotLeader):
    """The fence failed: the lease is no longer held with this epoch (the transaction is undone)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """What a leader's write must find in the lease row: the lease, its holder and the epoch."""

    name: str
    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One lease row."""

    name: str
    holder: str
    epoch: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime

    @property
    def fence(self) -> Fence:
        """The fence of this holder and epoch."""
        return Fence(self.name, self.holder, self.epoch)

    def expired(self, now: datetime) -> bool:
        """True once `now` reached `expires_at`."""
        return self.expires_at <= now


@dataclass(frozen=True, slots=True)
class Acquired:
    """A successful acquisition: the new lease, and the one it replaced (None: first ever)."""

    lease: LeaseRecord
    previous: LeaseRecord | None


def _record(row: Any) -> LeaseRecord:
    return LeaseRecord(row.name, row.holder, row.epoch, row.acquired_at, row.renewed_at, row.expires_at)


def _postgres(session: Session) -> bool:
    return session.connection().dialect.name == "postgresql"


def database_now(session: Session) -> datetime:
    """The time lease rows are written and compared with: PostgreSQL's `now()`, else the process clock."""
    if _postgres(session):
        value = session.execute(sa.select(sa.func.now())).scalar_one()
        assert isinstance(value, datetime)
        return value.astimezone(UTC)
    return datetime.now(UTC)


def bound_waits(session: Session, seconds: float, locks: bool = True) -> None:
    """Bound, for this transaction, how long it may sit idle and (with `locks`) wait for a lock.

    PostgreSQL only. A replica paused (SIGSTOP, a long GC, a frozen VM) inside a
    transaction that holds locks would otherwise block everyone waiting for them,
    takeovers included, until it wakes up; the server ends such a session after
    `seconds` instead, and its transaction is rolled back.
    """
    if not _postgres(session):
        return
    millis = str(max(1, int(seconds * 1000)))
    session.execute(
        sa.text("SELECT set_config('idle_in_transaction_session_timeout', :ms, true)"), {"ms": millis}
    )
    if locks:
        session.execute(sa.text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": millis})


def get_lease(session: Session, name: str, lock: bool = False) -> LeaseRecord | None:
    """The lease called `name`, or None (locked FOR UPDATE on PostgreSQL when asked)."""
    statement = sa.select(leases_t).where(leases_t.c.name == name)
    if lock and _postgres(session):
        statement = statement.with_for_update()
    row = session.execute(statement).first()
    return _record(row) if row is not None else None


def try_acquire(
    session: Session,
    name: str,
    holder: str,
    now: datetime,
    duration_seconds: float,
    take_over: bool = False,
) -> Acquired | None:
    """Take the lease if nobody holds it, it expired, or its holder has our identity.

    `take_over` takes it whatever its state (the single-node SQLite start). Every
    acquisition increments the epoch, which fences the previous holder's writes.
    None when someone else holds the lease.
    """
    expires = now + timedelta(seconds=duration_seconds)
    current = get_lease(session, name, lock=True)
    if current is None:
        values = {"name": name, "holder": holder, "epoch": 1, "acquired_at": now,
                  "renewed_at": now, "expires_at": expires}
        if _postgres(session):
            # Two first candidates at once: one insert wins, the other finds the row taken.
            inserted = session.execute(
                postgresql.insert(leases_t).values(values)
                .on_conflict_do_nothing(index_elements=["name"]).returning(leases_t.c.name)
            ).first()
            if inserted is None:
                return None
        else:
            session.execute(sa.insert(leases_t).values(values))
        return Acquired(LeaseRecord(name, holder, 1, now, now, expires), None)
    if not (take_over or current.holder == holder or current.expired(now)):
        return None
    updated = session.execute(
        sa.update(leases_t)
        .where(leases_t.c.name == name, leases_t.c.epoch == current.epoch)
        .values(holder=holder, epoch=current.epoch + 1, acquired_at=now, renewed_at=now,
                expires_at=expires)
    )
    if updated.rowcount != 1:  # type: ignore[attr-defined]
        return None
    lease = LeaseRecord(name, holder, current.epoch + 1, now, now, expires)
    return Acquired(lease, current)


def renew(
    session: Session, fence: Fence, now: datetime, duration_seconds: float
) -> LeaseRecord | None:
    """Extend the lease held with `fence`; None when it is no longer held with that epoch."""
    expires = now + timedelta(seconds=duration_seconds)
    updated = session.execute(
        sa.update(leases_t)
        .where(leases_t.c.name == fence.name, leases_t.c.holder == fence.holder,
               leases_t.c.epoch == fence.epoch)
        .values(renewed_at=now, expires_at=expires)
    )
    if updated.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return get_lease(session, fence.name)


def release(session: Session, fence: Fence, now: datetime) -> bool:
    """Let the lease expire now (a clean stop): others acquire it at their next try."""
    updated = session.execute(
        sa.update(leases_t)
        .where(leases_t.c.name == fence.name, leases_t.c.holder == fence.holder,
               leases_t.c.epoch == fence.epoch)
        .values(expires_at=now)
    )
    return bool(updated.rowcount == 1)  # type: ignore[attr-defined]


def holds(session: Session, fence: Fence, lock: bool = False) -> bool:
    """True when the lease is held with `fence` (share-locked until the commit, on PostgreSQL, when asked).

    The share lock makes a concurrent takeover (an UPDATE of the row) wait for this
    transaction; a takeover that committed first changed the epoch, and the row no
    longer matches. The holder's own renewal also waits for the transaction, which is
    short.
    """
    statement = sa.select(leases_t.c.epoch).where(
        leases_t.c.name == fence.name, leases_t.c.holder == fence.holder,
        leases_t.c.epoch == fence.epoch,
    )
    if lock and _postgres(session):
        statement = statement.with_for_update(read=True)
    return session.execute(statement).first() is not None


class FencedStore(Store):
    """A store for writes made on behalf of the leader (the pass, the watched directory).

    `fence()` gives the leader's current fence, or None when this replica does not
    lead (then `write()` raises `NotLeader` before touching the database). Each write
    transaction checks the fence at its start and again just before its commit;
    when the check fails, `on_lost(fence)` is told and `LeaseLost` undoes the
    transaction. Reads are not fenced.
    """

    def __init__(
        self,
        store: Store,
        fence: Callable[[], Fence | None],
        on_lost: Callable[[Fence], None] | None = None,
        idle_limit_seconds: float | None = None,
    ) -> None:
        super().__init__(store.engine, over=store)
        self._fence = fence
        self._on_lost = on_lost
        self._idle_limit = idle_limit_seconds

    @contextmanager
    def write(self, check_references: bool = True) -> Iterator[Session]:
        """A write transaction that commits only while the lease is held with the leader's epoch."""
        fence = self._fence()
        if fence is None:
            raise NotLeader("this controller does not hold the leader lease")
        try:
            with super().write(check_references) as session:
                if self._idle_limit is not None:
                    # No lock timeout: a pass waiting for rows is not stale, the final check decides.
                    bound_waits(session, self._idle_limit, locks=False)
                _check(session, fence, lock=False)
                yield session
                _check(session, fence, lock=True)
        except LeaseLost:
            # Told after the rollback: the listener may write (audit) on its own.
            if self._on_lost is not None:
                self._on_lost(fence)
            raise


def _check(session: Session, fence: Fence, lock: bool) -> None:
    if not holds(session, fence, lock=lock):
        raise LeaseLost(
            f"lease {fence.name!r} is no longer held by {fence.holder} with epoch {fence.epoch}"
        )


__all__ = [
    "RECONCILER_LEASE",
    "Acquired",
    "Fence",
    "FencedStore",
    "LeaseLost",
    "LeaseRecord",
    "NotLeader",
    "bound_waits",
    "database_now",
    "get_lease",
    "holds",
    "release",
    "renew",
    "try_acquire",
]
