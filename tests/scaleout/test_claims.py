"""Concurrent claims from many workers across two replicas: no double assignment, no overbooking."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest

from tests.scaleout.conftest import (
    SCENARIO,
    ControllerProcess,
    SimulatedWorker,
    audit_rows,
    jobs_yaml,
    one_leader,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

JOBS = 2000
NODES = 20
SLOTS = 4


def test_thousands_of_claims_across_both_replicas_assign_each_job_once(
    start_controller: Callable[..., ControllerProcess], farm_db: str,
) -> None:
    a = start_controller("ctl-a")
    b = start_controller("ctl-b")
    wait_for(lambda: one_leader([a, b]), 10, "exactly one leader")
    with a.client(timeout=120) as c:
        c.apply(SCENARIO + jobs_yaml(JOBS))
    stop = threading.Event()
    # Each worker alternates between the replicas: both heartbeat paths and the leader's
    # pass schedule at once.
    workers = [SimulatedWorker(f"w{i:02d}", SLOTS, [a.url, b.url][i % 2:] + [a.url, b.url][:i % 2], stop)
               for i in range(NODES)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: sum(len(w.completed) for w in workers) >= JOBS, 90, "every job completed",
                 step=0.2)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
            w.close()

    assert [e for w in workers for e in w.errors] == []
    handed = Counter(job for w in workers for job, _ in w.assigned)
    assert len(handed) == JOBS and set(handed.values()) == {1}
    transitions = audit_rows(farm_db, "job.transition")
    assigned = Counter(r.entity_id for r in transitions if r.details["to"] == "assigned")
    assert len(assigned) == JOBS and set(assigned.values()) == {1}, assigned.most_common(3)
    # Replay the transitions in commit order (ids): a node never holds more than its slots.
    # (A binding is only made after its node's row lock is taken and the slot counted, so a
    # slot freed by a report is always audited before the binding that reuses it.)
    active: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for r in transitions:
        node, to = r.details["node"], r.details["to"]
        if to == "assigned":
            active[node] += 1
            peak[node] = max(peak[node], active[node])
        elif to in ("completed", "failed", "pending", "cancelled"):
            active[node] -= 1
    assert max(peak.values()) <= SLOTS, dict(peak)
    assert set(active.values()) == {0}
    served = Counter(r.details["node"] for r in transitions if r.details["to"] == "assigned")
    assert len(served) == NODES  # everyone got work
