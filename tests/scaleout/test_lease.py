"""The leader lease under a frozen clock, on SQLite and PostgreSQL: acquire, renew, expire, take over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.config import LeaderElectionConfig
from controller.leader import LeaderElector, Leadership
from controller.store import leases
from controller.store.audit import write_audit
from controller.store.engine import Store
from controller.store.leases import Fence

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
NAME = leases.RECONCILER_LEASE
CONFIG = LeaderElectionConfig()  # 15 s / 10 s / 2 s


def _acquire(store: Store, holder: str, now: datetime, take_over: bool = False) -> leases.Acquired | None:
    with store.write() as session:
        return leases.try_acquire(session, NAME, holder, now, 15, take_over=take_over)


def _lease(store: Store) -> leases.LeaseRecord | None:
    with store.read() as session:
        return leases.get_lease(session, NAME)


def test_first_acquisition_has_epoch_one_and_others_wait(store: Store) -> None:
    got = _acquire(store, "a", T0)
    assert got is not None and got.previous is None
    assert (got.lease.holder, got.lease.epoch, got.lease.expires_at) == ("a", 1, T0 + timedelta(seconds=15))
    assert _acquire(store, "b", T0 + timedelta(seconds=14.9)) is None
    assert _lease(store) == got.lease


def test_renewal_extends_and_keeps_the_epoch(store: Store) -> None:
    got = _acquire(store, "a", T0)
    assert got is not None
    with store.write() as session:
        renewed = leases.renew(session, got.lease.fence, T0 + timedelta(seconds=10), 15)
    assert renewed is not None
    assert (renewed.epoch, renewed.renewed_at, renewed.expires_at) == (
        1, T0 + timedelta(seconds=10), T0 + timedelta(seconds=25))
    assert renewed.acquired_at == T0
    assert _acquire(store, "b", T0 + timedelta(seconds=24)) is None


def test_an_expired_lease_is_taken_over_with_the_next_epoch(store: Store) -> None:
    first = _acquire(store, "a", T0)
    assert first is not None
    taken = _acquire(store, "b", T0 + timedelta(seconds=15))  # expires_at reached
    assert taken is not None and taken.previous == first.lease
    assert (taken.lease.holder, taken.lease.epoch) == ("b", 2)
    with store.write() as session:
        assert leases.renew(session, first.lease.fence, T0 + timedelta(seconds=16), 15) is None
        assert not leases.holds(session, first.lease.fence)
        assert leases.holds(session, taken.lease.fence, lock=True)


def test_same_identity_and_take_over_acquire_at_once_with_a_new_epoch(store: Store) -> None:
    assert _acquire(store, "a", T0) is not None
    again = _acquire(store, "a", T0 + timedelta(seconds=1))  # a restart with a stable identity
    assert again is not None and again.lease.epoch == 2
    forced = _acquire(store, "b", T0 + timedelta(seconds=2), take_over=True)
    assert forced is not None and (forced.lease.holder, forced.lease.epoch) == ("b", 3)


def test_release_lets_the_next_candidate_in_at_once(store: Store) -> None:
    got = _acquire(store, "a", T0)
    assert got is not None
    with store.write() as session:
        assert leases.release(session, got.lease.fence, T0 + timedelta(seconds=3))
    taken = _acquire(store, "b", T0 + timedelta(seconds=3))
    assert taken is not None and taken.lease.epoch == 2


class Clocks:
    """A frozen lease clock and a frozen monotonic clock, moved together."""

    def __init__(self) -> None:
        self.now = T0
        self.mono = 1000.0

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


def _elector(store: Store, identity: str, clocks: Clocks, events: list[Any],
             mono: Any = None) -> LeaderElector:
    def started(leadership: Leadership) -> None:
        events.append((identity, "started", leadership.fence.epoch, leadership.previous_holder))

    def stopped(fence: Fence, why: str) -> None:
        events.append((identity, "stopped", fence.epoch, why))

    return LeaderElector(
        store, CONFIG, identity, on_started=started, on_stopped=stopped,
        lease_clock=lambda _session: clocks.now, clock=lambda: clocks.now,
        monotonic=mono or (lambda: clocks.mono),
    )


def _audit(store: Store) -> list[tuple[str, dict[str, Any]]]:
    import sqlalchemy as sa

    from controller.store.models import AuditLog

    table = AuditLog.__table__  # type: ignore[attr-defined]
    with store.read() as session:
        rows = session.execute(sa.select(table.c.event_type, table.c.details)
                               .where(table.c.event_type.like("controller.leader%"))
                               .order_by(table.c.id)).all()
    return [(r.event_type, r.details) for r in rows]


def test_electors_lead_renew_expire_and_take_over(store: Store) -> None:
    clocks = Clocks()
    events: list[Any] = []
    a, b = _elector(store, "a", clocks, events), _elector(store, "b", clocks, events)
    assert a.step() is True and b.step() is False
    assert a.fence() == Fence(NAME, "a", 1) and b.fence() is None
    for _ in range(10):  # 20 s of renewals every retry period: b never gets in
        clocks.tick(2)
        assert a.step() is True and b.step() is False
    # a goes silent (partitioned, paused): past the renew deadline it stops leading by itself...
    clocks.tick(10.5)
    assert a.fence() is None and a.is_leader() is False
    assert b.step() is False  # ...while the lease, renewed 10.5 s ago, is not expired yet
    clocks.tick(4.5)  # 15 s since the last renewal
    assert b.step() is True and b.fence() == Fence(NAME, "b", 2)
    assert a.step() is False  # its renewal finds epoch 2: it knows it lost
    assert events == [("a", "started", 1, None), ("b", "started", 2, "a"),
                      ("a", "stopped", 1, "the lease was taken over")]
    assert [(e, d["holder"], d["epoch"]) for e, d in _audit(store)] == [
        ("controller.leader_acquired", "a", 1), ("controller.leader_acquired", "b", 2),
        ("controller.leader_lost", "a", 1)]
    assert _audit(store)[1][1]["previousHolder"] == "a" and _audit(store)[1][1]["previousExpired"]


def test_a_clean_stop_hands_the_lease_over_at_once(store: Store) -> None:
    clocks = Clocks()
    events: list[Any] = []
    a, b = _elector(store, "a", clocks, events), _elector(store, "b", clocks, events)
    assert a.step()
    a.stop(release=True)
    clocks.tick(0.1)
    assert b.step() and b.fence() == Fence(NAME, "b", 2)
    assert ("a", "stopped", 1, "released at shutdown") in events


def test_fenced_writes_commit_only_on_the_current_epoch(store: Store) -> None:
    clocks = Clocks()
    frozen_mono = 1000.0  # a's own clock never notices: only the database fence can stop it
    a = _elector(store, "a", clocks, [], mono=lambda: frozen_mono)
    b = _elector(store, "b", clocks, [])
    fenced = leases.FencedStore(store, a.fence, a.fence_failed)
    assert a.step()
    with fenced.write() as session:
        write_audit(session, "test.write", "test", "one", {}, clocks.now)
    clocks.tick(16)
    assert b.step()
    assert a.fence() is not None  # a still believes it leads
    with pytest.raises(leases.LeaseLost), fenced.write() as session:
        write_audit(session, "test.write", "test", "two", {}, clocks.now)
    assert a.fence() is None and a.leadership is None  # told by the failed fence
    with pytest.raises(leases.NotLeader), fenced.write():
        pass
    import sqlalchemy as sa

    with store.read() as session:
        written = session.execute(sa.text("SELECT entity_id FROM audit_log WHERE event_type = 'test.write'"))
        assert [r[0] for r in written] == ["one"]
