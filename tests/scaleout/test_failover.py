"""Two controller processes on one PostgreSQL database: one leads; kill -9 it, the other takes over."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from tests.scaleout.conftest import (
    LEASE,
    RETRY_PERIOD,
    SCENARIO,
    ControllerProcess,
    SimulatedWorker,
    audit_rows,
    jobs_yaml,
    one_leader,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

JOBS = 120
NODES = 4
SLOTS = 2


def test_kill_the_leader_the_other_takes_over_and_every_job_completes_once(
    start_controller: Callable[..., ControllerProcess], farm_db: str,
) -> None:
    a = start_controller("ctl-a")
    b = start_controller("ctl-b")
    both = [a, b]
    leader = wait_for(lambda: one_leader(both), 10, "exactly one leader")
    follower = b if leader is a else a
    assert follower.readyz() == {**(follower.readyz() or {}), "status": "ready", "leader": False}
    assert "ffrtmp_master_leader 1.0" in leader.client().metrics()
    assert "ffrtmp_master_leader 0.0" in follower.client().metrics()

    with follower.client(timeout=60) as c:  # desired state through the replica that does not lead
        c.apply(SCENARIO + jobs_yaml(JOBS))
    stop = threading.Event()
    workers = [SimulatedWorker(f"w{i}", SLOTS, [a.url, b.url], stop, hold_seconds=0.05)
               for i in range(NODES)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: sum(len(w.completed) for w in workers) >= JOBS // 4, 30, "a quarter done")
        leader.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leader.process.wait(10)
        wait_for(follower.leads, LEASE + 5, "the follower to lead", step=0.02)
        took = time.monotonic() - killed
        wait_for(lambda: sum(len(w.completed) for w in workers) >= JOBS, 60, "every job completed")
    finally:
        stop.set()
        for w in workers:
            w.join(10)
            w.close()

    # Within the lease duration of the last renewal (at most one retry period before the kill).
    assert took <= LEASE + RETRY_PERIOD + 0.5, took
    assert "ffrtmp_master_leader 1.0" in follower.client().metrics()
    with follower.client() as c:
        stats = c.queue_stats()
    assert stats["totalCompleted"] == JOBS, stats

    assigned = Counter(
        r.entity_id for r in audit_rows(farm_db, "job.transition") if r.details["to"] == "assigned"
    )
    assert len(assigned) == JOBS and set(assigned.values()) == {1}, assigned.most_common(3)
    assert [e for w in workers for e in w.errors] == []  # no 500: replicas never trip on each other
    handed = Counter(job for w in workers for job, _ in w.assigned)
    assert set(handed.values()) == {1}
    assert all(attempt == 1 for w in workers for _, attempt in w.completed)
    assert [r for r in audit_rows(farm_db, "node.transition") if r.details["to"] == "dead"] == []
    leadership = audit_rows(farm_db, "controller.leader_acquired")
    assert [r.details["holder"] for r in leadership] == [leader.name, follower.name]
    assert leadership[1].details["previousHolder"] == leader.name
    assert leadership[1].details["epoch"] == leadership[0].details["epoch"] + 1
    messages = [json.loads(line)["message"] for line in follower.lines if line.startswith("{")]
    assert any(m.startswith(f"[Leader] {follower.name} is now the leader") for m in messages)


def _lock_waiters(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")).scalar_one())
    finally:
        engine.dispose()


def test_a_paused_leader_writes_nothing_once_it_lost_the_lease(
    start_controller: Callable[..., ControllerProcess], farm_db: str,
) -> None:
    a = start_controller("ctl-a")
    wait_for(a.leads, 10, "the first controller to lead")
    b = start_controller("ctl-b")
    assert not b.leads()
    with b.client() as c:
        c.apply(SCENARIO)
        c.heartbeat("w1", slots=4, running=[])  # a ready node with free slots
    engine = sa.create_engine(farm_db)
    blocker = engine.connect()
    try:
        # Hold every node row: the leader's next pass stops in its scheduling transaction,
        # after that transaction's first fence check passed.
        tx = blocker.begin()
        blocker.execute(sa.text("SELECT id FROM nodes FOR UPDATE"))
        with b.client() as c:
            c.apply(jobs_yaml(3, "late"))
        wait_for(lambda: _lock_waiters(farm_db) >= 1, 10, "the leader's pass to wait for the nodes")
        os.kill(a.process.pid, signal.SIGSTOP)
        paused = time.monotonic()
        wait_for(b.leads, LEASE + 5, "the other controller to take over", step=0.02)
        assert time.monotonic() - paused <= LEASE + RETRY_PERIOD + 0.5
        lost_at = max(r.id for r in audit_rows(farm_db, "controller.leader_acquired"))
        tx.rollback()  # the stale pass gets its rows...
        os.kill(a.process.pid, signal.SIGCONT)  # ...and resumes, on epoch 1
        wait_for(lambda: any("Reconcile pass stopped" in line or "stopped leading" in line
                             for line in a.lines), 10, "the old leader to notice")
        wait_for(lambda: len([r for r in audit_rows(farm_db, "job.transition")
                              if r.details["to"] == "assigned"]) == 3, 10, "the new leader to bind")
        time.sleep(1.0)  # give a stale writer every chance to show up
    finally:
        blocker.close()
        engine.dispose()

    assert not a.leads() and b.leads()
    after = [r for r in audit_rows(farm_db, "job.transition", "node.transition", "manifest.applied",
                                   "controller.leader_acquired") if r.id > lost_at]
    assigned = Counter(r.entity_id for r in after if r.event_type == "job.transition")
    assert assigned == {"late-00000": 1, "late-00001": 1, "late-00002": 1}, after
    assert not [r for r in after if r.event_type == "controller.leader_acquired"]
    lost = audit_rows(farm_db, "controller.leader_lost")
    assert [(r.details["holder"], r.details["epoch"]) for r in lost] == [("ctl-a", 1)]
    messages = [json.loads(line)["message"] for line in a.lines if line.startswith("{")]
    stopped = [m for m in messages if m.startswith("[Leader] Reconcile pass stopped")]
    assert stopped and "no longer held by ctl-a with epoch 1" in stopped[0], "\n".join(messages)
