"""The leader's pass is fenced by the lease epoch; a new leader restarts the start-time grace."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from controller.config import ControllerConfig, DatabaseConfig, LeaderElectionConfig
from controller.farm import Farm
from controller.leader import LeaderElector
from controller.manifests.validate import validate_texts
from controller.reconcile import Reconciler
from controller.sources.apply import Origin
from controller.store import leases
from controller.store.engine import Store

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
CONFIG = ControllerConfig()
MANIFESTS = """
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: enc}
spec: {command: [echo]}
---
apiVersion: ffrtmp.io/v1
kind: Job
metadata: {name: j1}
spec: {scenario: enc}
"""


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def seeded(store: Store) -> Farm:
    farm = Farm(store, CONFIG, clock=lambda: T0)
    report = validate_texts({"m.yaml": MANIFESTS})
    farm.apply([o.manifest for o in report.objects], Origin("api"), now=T0)
    return farm


def audit_types(store: Store) -> list[str]:
    with store.read() as session:
        return [r[0] for r in session.execute(sa.text("SELECT event_type FROM audit_log ORDER BY id"))]


class Frozen:
    def __init__(self) -> None:
        self.now = T0

    def lease_clock(self, _session: Any) -> datetime:
        return self.now


def elector(store: Store, identity: str, clock: Frozen, mono: float = 0.0) -> LeaderElector:
    return LeaderElector(store, LeaderElectionConfig(), identity, lease_clock=clock.lease_clock,
                         clock=lambda: clock.now, monotonic=lambda: mono)


def test_a_deposed_leader_pass_fails_on_the_epoch_and_writes_nothing(store: Store) -> None:
    farm = seeded(store)
    clock = Frozen()
    old = elector(store, "old", clock)  # its monotonic clock is stuck: it never notices by itself
    assert old.step()
    reconciler = Reconciler(leases.FencedStore(store, old.fence, old.fence_failed), CONFIG, T0)
    farm.heartbeat("w1", slots=0, now=at(1))  # a node with no slot: nothing scheduled yet
    clock.now = at(20)
    assert elector(store, "new", clock).step()  # the lease expired: taken over, epoch 2
    farm.heartbeat("w1", slots=1, now=at(20))  # the heartbeat path binds j1 (any replica may)
    before = audit_types(store)
    with farm.store.write() as session:  # make work only the pass would do: j1 back to pending
        session.execute(sa.text("UPDATE jobs SET timeout_at = :t WHERE name = 'j1'"), {"t": at(21)})
    with pytest.raises(leases.LeaseLost):
        reconciler.reconcile(at(500))  # would requeue j1 (AssignTimeout) and declare w1 dead
    assert audit_types(store)[len(before):] == ["controller.leader_lost"]
    assert old.fence() is None
    with store.read() as session:
        status = session.execute(sa.text("SELECT status FROM jobs WHERE name = 'j1'")).scalar()
        node = session.execute(sa.text("SELECT status FROM nodes WHERE name = 'w1'")).scalar()
    assert (status, node) == ("assigned", "ready")


def test_a_new_leader_gives_nodes_the_start_time_grace(store: Store) -> None:
    farm = seeded(store)
    farm.heartbeat("w1", slots=1, now=at(0))
    reconciler = Reconciler(store, CONFIG, started_at=at(0))
    reconciler.lead_from(at(100))  # became leader 100 s later; w1's heartbeats went elsewhere
    assert reconciler.reconcile(at(159)).dead_nodes == []  # 59 s since the leadership began
    assert reconciler.reconcile(at(161)).dead_nodes == ["w1"]


@pytest.mark.postgres
def test_a_takeover_during_the_leader_transaction_makes_its_commit_fail(empty_pg_url: str) -> None:
    """The fence is checked again just before the commit, not only when the transaction began."""
    from controller.store.migrate import upgrade

    store = Store.from_config(DatabaseConfig(url=empty_pg_url))
    upgrade(store)
    try:
        clock = Frozen()
        old = elector(store, "old", clock)
        assert old.step()
        fenced = leases.FencedStore(store, old.fence, old.fence_failed)
        clock.now = at(16)
        new = elector(store, "new", clock)
        with pytest.raises(leases.LeaseLost), fenced.write() as session:
            session.execute(sa.text("INSERT INTO controller_state (key, value, updated_at) "
                                    "VALUES ('probe', '{}', now())"))
            # Another replica takes the expired lease over meanwhile (its own connection).
            taker = threading.Thread(target=new.step)
            taker.start()
            taker.join(10)
        assert new.fence() == leases.Fence(leases.RECONCILER_LEASE, "new", 2)
        assert old.fence() is None
        with store.read() as session:
            assert session.execute(sa.text("SELECT count(*) FROM controller_state")).scalar() == 0
    finally:
        store.dispose()


@pytest.mark.postgres
def test_two_replicas_registering_one_node_at_once_leave_one_node(
    empty_pg_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The first beat whose insert loses waits for the other's commit and goes on with its row."""
    from controller.store.migrate import upgrade

    caplog.set_level(logging.INFO, logger="controller.farm")
    first, second = (Store.from_config(DatabaseConfig(url=empty_pg_url)) for _ in range(2))
    upgrade(first)
    replies: list[Any] = []
    try:
        a, b = Farm(first, CONFIG, clock=lambda: T0), Farm(second, CONFIG, clock=lambda: T0)
        with first.write() as session:
            assert a._heartbeat_work("w9", 2, {}, [], None, at(0), False)(session).registered
            racer = threading.Thread(target=lambda: replies.append(b.heartbeat("w9", slots=2, running=[])))
            racer.start()
            deadline = time.monotonic() + 10
            while not _waits_for_a_lock(second) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _waits_for_a_lock(second)  # its insert waits on ours, not yet committed
        racer.join(10)
        assert not racer.is_alive() and len(replies) == 1 and not replies[0].registered
        assert "Node w9 was registered concurrently" in caplog.text
        with first.read() as session:
            assert session.execute(sa.text("SELECT count(*) FROM nodes WHERE name = 'w9'")).scalar() == 1
            assert session.execute(sa.text("SELECT status FROM nodes WHERE name = 'w9'")).scalar() == "ready"
        assert audit_types(first).count("node.registered") == 1
    finally:
        first.dispose()
        second.dispose()


def _waits_for_a_lock(store: Store) -> bool:
    with store.read() as session:
        return bool(session.execute(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar())
