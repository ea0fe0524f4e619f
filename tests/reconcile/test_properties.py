"""Random farms: invariants hold after every step of any sequence of events."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import controller
from controller.farm import Conflict
from controller.testing import Cluster, ManifestError

NODES = {"w1": 1, "w2": 2, "w3": 3}
JOBS = [f"j{i}" for i in range(6)]
PRIORITIES = ["live", "high", "medium", "low", "batch"]

SCENARIO = """
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: enc}
spec: {command: [sleep, "1"], expectedDurationSeconds: 20}
"""


def job_manifest(name: str, priority: str, max_retries: int) -> str:
    return (f"---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {{name: {name}}}\n"
            f"spec: {{scenario: enc, priority: {priority}, maxRetries: {max_retries}}}\n")


step = st.one_of(
    st.tuples(st.just("apply"), st.sampled_from(JOBS), st.sampled_from(PRIORITIES), st.integers(0, 2)),
    st.tuples(st.just("heartbeat"), st.sampled_from(sorted(NODES)), st.booleans()),
    st.tuples(st.just("report"), st.sampled_from(JOBS),
              st.sampled_from(["running", "completed", "failed", "released"]), st.integers(-1, 1)),
    st.tuples(st.just("tick"), st.sampled_from([1, 5, 30, 61, 200, 400])),
    st.tuples(st.just("reconcile")),
    st.tuples(st.just("cancel"), st.sampled_from(JOBS)),
    st.tuples(st.just("retry"), st.sampled_from(JOBS)),
)


def run(c: Cluster, action: tuple[Any, ...]) -> None:
    kind = action[0]
    names = {j.name for j in c.jobs()}
    if kind == "apply":
        _, name, priority, retries = action
        try:
            c.apply(SCENARIO + job_manifest(name, priority, retries))  # only mutable fields vary
        except ManifestError as exc:  # refused, and nothing changed (the invariants say so)
            assert "is below the retries this job has already used" in str(exc), exc
    elif kind == "heartbeat":
        _, node, with_running = action
        running = None
        if with_running:
            running = [(j.name, j.attempt) for j in c.jobs() if j.node == node and j.status == "running"]
        c.heartbeat(node, slots=NODES[node], running=running)
    elif kind == "report":
        _, name, state, offset = action
        if name in names:
            job = c.job(name)
            with contextlib.suppress(controller.StaleAttempt, Conflict):
                c.report(name, state, attempt=max(job.attempt + offset, 0), exit_code=1)
    elif kind == "tick":
        c.tick(action[1])
    elif kind == "reconcile":
        result = c.reconcile()
        dead = {n.name for n in c.nodes() if n.status == "dead"}
        for job in c.jobs():
            if job.status in ("assigned", "running"):
                assert job.node not in dead, f"{job.name} {job.status} on dead {job.node}"
        assert result is not None
    elif kind in ("cancel", "retry") and action[1] in names:
        with contextlib.suppress(Conflict):
            getattr(c, kind)(action[1])


def check_invariants(c: Cluster, attempts_seen: dict[str, int]) -> None:
    jobs = c.jobs()
    for job in jobs:
        chain = [e.details for e in c.audit(entity=f"job/{job.name}", event_type="job.transition")]
        status = "pending"
        for t in chain:
            assert t["from"] == status, (job.name, chain)
            status = t["to"]
        assert status == job.status
        assert job.attempt >= attempts_seen.get(job.name, 0)
        attempts_seen[job.name] = job.attempt
        assert 0 <= job.retry_count <= job.max_retries
    for node in c.nodes():
        held = [j for j in jobs if j.node == node.name and j.status in ("assigned", "running")]
        assert len(held) <= node.slots, (node.name, [j.name for j in held])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=40))
def test_invariants_hold_after_every_step(actions: list[tuple[Any, ...]]) -> None:
    seen: dict[str, int] = {}
    with Cluster(config={"faultTolerance": {"retryDelaySeconds": 1}}) as c:
        for action in actions:
            run(c, action)
            check_invariants(c, seen)
