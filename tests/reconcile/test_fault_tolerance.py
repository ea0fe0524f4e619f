"""Fault tolerance through the time-frozen harness: one rule per test, exact edges."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.testing import Cluster, ManifestError

SCENARIO = """
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: enc}
spec:
  command: [sleep, "{seconds}"]
  defaults: {seconds: 5}
  expectedDurationSeconds: 30
"""


def job(name: str, priority: str = "medium", **spec: Any) -> str:
    extra = "".join(f"\n  {k}: {v}" for k, v in spec.items())
    return f"""
---
apiVersion: ffrtmp.io/v1
kind: Job
metadata: {{name: {name}}}
spec:
  scenario: enc
  priority: {priority}{extra}
"""


def cluster(**ft: Any) -> Cluster:
    return Cluster(start="2026-01-01T10:00:00Z", config={"faultTolerance": ft} if ft else None)


def running_on_w1(c: Cluster, *names: str) -> None:
    """Apply the jobs, give them to worker w1 (alone), and report them running."""
    c.heartbeat("w1", slots=len(names) or 1)
    c.reconcile()
    for name in names:
        assert c.job(name).node == "w1"
        c.report(name, "running")


# --- 1. dead-node detection ----------------------------------------------------------------------


def test_node_dies_strictly_after_the_timeout() -> None:
    with cluster() as c:
        c.heartbeat("w1")
        c.tick(60)
        c.reconcile()
        assert c.node("w1").status == "ready"
        c.tick(0.001)
        result = c.reconcile()
        assert c.node("w1").status == "dead"
        assert result.dead_nodes == ["w1"]
        transitions = [e.details for e in c.audit(entity="node/w1", event_type="node.transition")]
        assert [(t["from"], t["to"]) for t in transitions] == [("unknown", "ready"), ("ready", "dead")]


def test_fresh_heartbeats_keep_nodes_alive() -> None:
    with cluster() as c:
        for _ in range(20):
            c.heartbeat("w1")
            c.heartbeat("w2")
            c.tick(59)
            c.reconcile()
        assert {n.name: n.status for n in c.nodes()} == {"w1": "ready", "w2": "ready"}
        assert c.audit(event_type="node.transition")[-1].details["to"] == "ready"


def test_dead_node_comes_back_with_a_heartbeat() -> None:
    with cluster() as c:
        c.heartbeat("w1")
        c.tick(61)
        c.reconcile()
        reply = c.heartbeat("w1")
        assert reply.revived
        assert c.node("w1").status == "ready"


def test_declared_node_that_never_heartbeats_stays_unknown() -> None:
    with cluster() as c:
        c.apply("apiVersion: ffrtmp.io/v1\nkind: Node\nmetadata: {name: w9}\nspec: {slots: 2}\n")
        c.tick(3600)
        c.reconcile()
        assert c.node("w9").status == "unknown"


# --- 2/3. reassignment under the limit, failure at the limit -------------------------------------


def test_jobs_of_a_dead_node_are_requeued_with_retry_count() -> None:
    with cluster() as c:
        c.apply(SCENARIO + job("a") + job("b"))
        running_on_w1(c, "a", "b")
        c.tick(61)
        result = c.reconcile()
        assert sorted(result.requeued) == ["a", "b"]
        a = c.job("a")
        assert (a.status, a.reason, a.retry_count, a.node) == ("pending", "NodeLost", 1, None)
        assert a.not_before == c.now() + timedelta(seconds=5)
        last = c.audit(entity="job/a")[-1].details
        assert (last["from"], last["to"], last["reason"], last["node"]) == ("running", "pending", "NodeLost", "w1")


def test_assigned_jobs_of_a_dead_node_are_requeued_too() -> None:
    with cluster() as c:
        c.apply(SCENARIO + job("a"))
        c.heartbeat("w1")
        c.reconcile()
        assert c.job("a").status == "assigned"
        c.tick(61)
        c.reconcile()
        assert (c.job("a").status, c.job("a").reason) == ("pending", "NodeLost")


def test_job_fails_when_retries_are_exhausted() -> None:
    with cluster(maxRetries=1, retryDelaySeconds=0) as c:
        c.apply(SCENARIO + job("a"))
        for expected_retry in (1,):
            running_on_w1(c, "a")
            c.tick(61)
            c.reconcile()
            assert (c.job("a").status, c.job("a").retry_count) == ("pending", expected_retry)
        running_on_w1(c, "a")
        c.tick(61)
        result = c.reconcile()
        a = c.job("a")
        assert (a.status, a.reason, a.retry_count) == ("failed", "MaxRetriesExceeded", 1)
        assert "last cause: NodeLost" in (a.message or "")
        assert result.failed == ["a"]


def test_per_job_max_retries_overrides_the_default() -> None:
    with cluster() as c:
        c.apply(SCENARIO + job("a", maxRetries=0))
        running_on_w1(c, "a")
        c.tick(61)
        c.reconcile()
        assert (c.job("a").status, c.job("a").reason) == ("failed", "MaxRetriesExceeded")


# --- 4/5. retry delay, exponential backoff and its cap -----------------------------------------


def test_requeued_job_waits_for_its_retry_delay() -> None:
    with cluster(retryDelaySeconds=5) as c:
        c.apply(SCENARIO + job("a"))
        running_on_w1(c, "a")
        c.tick(61)
        c.reconcile()  # w1 dead, a requeued with notBefore = now + 5
        c.heartbeat("w2")  # a fresh node with room (the heartbeat path schedules too)
        assert c.job("a").status == "pending"
        c.tick(4.999)
        c.reconcile()
        assert c.job("a").status == "pending"
        c.tick(0.001)
        c.reconcile()
        assert (c.job("a").status, c.job("a").node, c.job("a").attempt) == ("assigned", "w2", 2)


def _fail_once(c: Cluster, name: str) -> None:
    c.heartbeat("w1")
    c.reconcile()
    c.report(name, "running")
    c.report(name, "failed", exit_code=1)


def test_exponential_backoff_doubles_and_is_capped() -> None:
    with cluster(retryBackoff="exponential", retryDelaySeconds=5, maxRetryDelaySeconds=15, maxRetries=5) as c:
        c.apply(SCENARIO + job("a"))
        delays = []
        for _ in range(4):
            _fail_once(c, "a")
            a = c.job("a")
            assert a.not_before is not None
            delays.append((a.not_before - c.now()).total_seconds())
            c.tick(delays[-1])
        assert delays == [5, 10, 15, 15]


# --- 6. stalled jobs and assign timeouts -------------------------------------------------------


def test_running_job_stalls_after_factor_times_expected_plus_grace() -> None:
    with cluster() as c:
        c.apply(SCENARIO + job("a"))  # expected 30 s: limit 2 x 30 + 300 = 360 s
        running_on_w1(c, "a")
        for _ in range(6):  # keep w1 alive for 360 s
            c.tick(60)
            c.heartbeat("w1")
        c.reconcile()
        assert c.job("a").status == "running"
        c.tick(0.001)
        c.reconcile()
        a = c.job("a")
        assert (a.status, a.reason, a.retry_count) == ("pending", "Stalled", 1)
        reply = c.heartbeat("w1", running=[("a", 1)])
        assert reply.cancel == [("a", 1)]  # the old attempt is fenced: the worker must stop it


def test_job_expected_duration_overrides_the_scenario() -> None:
    with cluster() as c:
        c.apply(SCENARIO + job("a", expectedDurationSeconds=10))  # limit 320 s
        running_on_w1(c, "a")
        c.tick(300)
        c.heartbeat("w1")
        c.tick(20.5)
        c.reconcile()
        assert c.job("a").reason == "Stalled"


def test_without_expected_duration_a_job_never_stalls() -> None:
    with cluster() as c:
        c.apply(SCENARIO.replace("  expectedDurationSeconds: 30\n", "") + job("a"))
        running_on_w1(c, "a")
        for _ in range(100):
            c.tick(59)
            c.heartbeat("w1")
        c.reconcile()
        assert c.job("a").status == "running"


def test_assigned_job_not_started_times_out() -> None:
    with cluster(assignTimeoutSeconds=20) as c:
        c.apply(SCENARIO + job("a"))
        c.heartbeat("w1")
        c.reconcile()
        c.tick(20)
        c.heartbeat("w1")
        c.reconcile()
        assert c.job("a").status == "assigned"
        c.tick(0.001)
        c.reconcile()
        a = c.job("a")
        assert (a.reason, a.retry_count) == ("AssignTimeout", 1)
        assert a.status == "pending"


def test_assign_timeout_follows_node_timeout_by_default() -> None:
    with cluster(nodeTimeoutSeconds=30) as c:
        c.apply(SCENARIO + job("a"))
        c.heartbeat("w1")
        c.reconcile()
        c.tick(29)
        c.heartbeat("w1")
        c.tick(1.001)
        c.reconcile()
        assert c.job("a").reason == "AssignTimeout"


# --- 7. start-time grace -----------------------------------------------------------------------


def test_restarted_controller_does_not_kill_nodes_for_its_own_downtime(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with Cluster(start="2026-01-01T10:00:00Z", config={"database": {"url": url}}) as c:
        c.apply(SCENARIO + job("a"))
        running_on_w1(c, "a")
    # Down for two minutes: longer than the node timeout, shorter than the job's stall limit.
    with Cluster(start="2026-01-01T10:02:00Z", config={"database": {"url": url}}) as c:
        c.reconcile()
        assert c.node("w1").status == "ready"
        assert c.job("a").status == "running"
        c.tick(60)
        c.reconcile()
        assert c.node("w1").status == "ready"
        c.tick(0.001)
        c.reconcile()
        assert c.node("w1").status == "dead"
        assert c.job("a").reason == "NodeLost"


# --- 8. mass-failure guard ---------------------------------------------------------------------


def test_mass_failure_holds_back_deaths_then_releases_them() -> None:
    with cluster() as c:
        for i in range(5):
            c.heartbeat(f"w{i}")
        c.tick(30)
        c.heartbeat("w4")  # one node keeps beating: 4 of 5 go silent (0.8 > 0.55)
        c.tick(31)
        result = c.reconcile()
        assert result.dead_nodes == [] and len(result.held_back_nodes) == 4
        assert len(c.audit(event_type="controller.mass_failure_suspected")) == 1
        c.tick(60)
        c.heartbeat("w4")
        c.tick(60)
        c.heartbeat("w4")
        c.reconcile()  # 120 s after the episode began: still held
        assert all(n.status == "ready" for n in c.nodes())
        c.tick(0.001)
        c.heartbeat("w4")
        result = c.reconcile()
        assert result.dead_nodes == ["w0", "w1", "w2", "w3"]
        assert len(c.audit(event_type="controller.mass_failure_suspected")) == 1


def test_mass_failure_needs_enough_affected_nodes() -> None:
    with cluster(massFailureMinNodes=3) as c:
        c.heartbeat("w0")
        c.heartbeat("w1")
        c.tick(61)
        assert c.reconcile().dead_nodes == ["w0", "w1"]
        assert c.audit(event_type="controller.mass_failure_suspected") == []


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_mass_failure_threshold_is_a_strict_ratio(threshold: float) -> None:
    with cluster(massFailureThreshold=threshold) as c:
        for i in range(10):
            c.heartbeat(f"w{i}")
        c.tick(30)
        for i in range(5, 10):
            c.heartbeat(f"w{i}")
        c.tick(31)
        result = c.reconcile()
        assert len(result.dead_nodes) == 5  # 5 of 10 = 0.5: not more than either threshold


def test_assign_timeout_also_waits_out_the_start_grace(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with Cluster(start="2026-01-01T10:00:00Z", config={"database": {"url": url},
                                                        "faultTolerance": {"assignTimeoutSeconds": 20}}) as c:
        c.apply(SCENARIO + job("a"))
        c.heartbeat("w1")
        c.reconcile()
        assert c.job("a").status == "assigned"
    # Down for a minute: the worker's `running` report could not be received meanwhile.
    config = {"database": {"url": url}, "faultTolerance": {"assignTimeoutSeconds": 20}}
    with Cluster(start="2026-01-01T10:01:00Z", config=config) as c:
        c.heartbeat("w1")
        c.reconcile()
        assert c.job("a").status == "assigned"
        c.report("a", "running")  # arrives after the restart: still current
        assert c.job("a").status == "running"
    with Cluster(start="2026-01-01T10:03:00Z", config=config) as c:
        c.reconcile()  # a running job is judged by its stall limit, not the assign timeout
        assert c.job("a").status == "running"


def test_assign_timeout_fires_once_the_start_grace_is_over(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = {"database": {"url": url}, "faultTolerance": {"assignTimeoutSeconds": 20}}
    with Cluster(start="2026-01-01T10:00:00Z", config=config) as c:
        c.apply(SCENARIO + job("a"))
        c.heartbeat("w1")
        c.reconcile()
    with Cluster(start="2026-01-01T10:01:00Z", config=config) as c:
        c.heartbeat("w1")
        c.tick(20)
        c.heartbeat("w1")
        c.reconcile()
        assert c.job("a").status == "assigned"
        c.tick(0.001)
        c.reconcile()
        assert c.job("a").reason == "AssignTimeout"


def test_the_seed_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="controller.reconcile")
    with cluster(maxRetries=1, retryDelaySeconds=0) as c:
        c.apply(SCENARIO + job("a"))
        running_on_w1(c, "a")
        node_id = 1
        c.tick(61)
        c.reconcile()
        running_on_w1(c, "a")
        c.tick(61)
        c.reconcile()
    lines = [r.getMessage() for r in caplog.records]
    assert f"[FaultTolerance] Detected dead node: w1 ({node_id})" in lines
    assert "[FaultTolerance] Reassigned job a (retry 1/1)" in lines
    assert "[FaultTolerance] Failed job a: max retries exceeded" in lines


def test_max_retries_cannot_drop_below_the_retries_already_used() -> None:
    with cluster() as c:
        c.apply(SCENARIO + job("a", maxRetries=3))
        running_on_w1(c, "a")
        c.tick(61)
        c.reconcile()  # w1 died: a is back in the queue, one retry used
        assert c.job("a").retry_count == 1
        with pytest.raises(ManifestError, match=re.escape(
                "Job/a: spec.maxRetries 0 is below the retries this job has already used (retryCount 1)")):
            c.apply(SCENARIO + job("a", maxRetries=0))
        assert c.job("a").max_retries == 3
        (lowered,) = c.apply(SCENARIO + job("a", maxRetries=1))[1:]
        assert lowered.result.value == "configured"
        assert (c.job("a").max_retries, c.job("a").retry_count) == (1, 1)
