"""The priority queue and scheduling through the harness, and the seed's PriorityQueueManager."""

from __future__ import annotations

from typing import Any

import pytest

from controller.domain.states import Priority
from controller.managers import PriorityQueueManager
from controller.testing import Cluster

SCENARIOS = """
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: enc}
spec: {command: [sleep, "1"]}
---
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: ff}
spec: {command: [ffmpeg, -version], requires: {ffmpeg: "true"}}
"""


def job(name: str, priority: str = "medium", scenario: str = "enc", **spec: Any) -> str:
    extra = "".join(f"\n  {k}: {v}" for k, v in spec.items())
    return (f"\n---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {{name: {name}}}\n"
            f"spec:\n  scenario: {scenario}\n  priority: {priority}{extra}\n")


def order_of_dispatch(c: Cluster, count: int, node: str = "w1") -> list[str]:
    """Run `count` jobs one at a time on a one-slot node; the order they were given out."""
    out = []
    for _ in range(count):
        c.reconcile()
        running = [j for j in c.jobs() if j.status == "assigned"]
        assert len(running) == 1, [j.name for j in running]
        out.append(running[0].name)
        c.report(running[0].name, "completed")
        c.heartbeat(node)
    return out


def idle_node(c: Cluster, name: str = "w1", slots: int = 1, **labels: str) -> None:
    """Register a node without letting its heartbeat take work (cordoned for that beat)."""
    c.apply(f"apiVersion: ffrtmp.io/v1\nkind: Node\nmetadata: {{name: {name}, labels: {labels or {}}}}\n"
            f"spec: {{slots: {slots}, unschedulable: true}}\n")
    c.heartbeat(name)
    c.apply(f"apiVersion: ffrtmp.io/v1\nkind: Node\nmetadata: {{name: {name}, labels: {labels or {}}}}\n"
            f"spec: {{slots: {slots}}}\n")


def test_classes_are_dispatched_in_priority_order() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("b", "batch") + job("l", "low") + job("m", "medium")
                + job("h", "high") + job("v", "live"))
        idle_node(c)
        assert order_of_dispatch(c, 5) == ["v", "h", "m", "l", "b"]


def test_fifo_within_a_class() -> None:
    with Cluster() as c:
        for name in ("first", "second", "third"):
            c.apply(SCENARIOS + job(name, "high"))
            c.tick(1)
        idle_node(c)
        assert order_of_dispatch(c, 3) == ["first", "second", "third"]


def test_a_live_job_submitted_last_runs_next() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + "".join(job(f"batch-{i}", "batch") for i in range(5)))
        c.tick(1)
        c.submit("enc", "live", name="urgent")
        idle_node(c)
        assert order_of_dispatch(c, 2) == ["urgent", "batch-0"]


def test_aging_lets_an_old_batch_job_overtake_new_medium_ones() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("old", "batch"))
        c.tick(600)  # batch: 1 + 2 = 3 > medium's 2
        c.apply(SCENARIOS + job("new", "medium"))
        idle_node(c)
        assert order_of_dispatch(c, 2) == ["old", "new"]


def test_strict_priority_when_aging_is_off() -> None:
    with Cluster(config={"queue": {"agingIntervalSeconds": 0}}) as c:
        c.apply(SCENARIOS + job("old", "batch"))
        c.tick(10**6)
        c.apply(SCENARIOS + job("new", "low"))
        idle_node(c)
        assert order_of_dispatch(c, 2) == ["new", "old"]


def test_aging_cap_keeps_live_first() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("ancient", "batch"))
        c.tick(10**6)
        c.apply(SCENARIOS + job("live", "live"))
        idle_node(c)
        assert order_of_dispatch(c, 2) == ["live", "ancient"]


def test_slots_bound_concurrency_and_most_free_node_wins() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + "".join(job(f"j{i}") for i in range(10)))
        idle_node(c, "w1", slots=3)
        idle_node(c, "w2", slots=2)
        result = c.reconcile()
        assert len(result.scheduled) == 5
        by_node = {n.name: n.running for n in c.nodes()}
        assert by_node == {"w1": 3, "w2": 2}
        assert [n for _, n in result.scheduled][:2] == ["w1", "w1"]  # 3 free beats 2 free
        assert c.reconcile().scheduled == []


def test_node_selector_and_scenario_requires_match_labels() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("zoned", nodeSelector="{zone: b}") + job("needs-ffmpeg", scenario="ff"))
        idle_node(c, "a1", slots=4, zone="a")
        c.reconcile()
        assert c.job("zoned").reason == "NoMatchingNode"
        assert c.job("needs-ffmpeg").reason == "NoMatchingNode"
        c.heartbeat("b1", slots=4, labels={"zone": "b", "ffmpeg": "true"})
        c.reconcile()
        assert c.job("zoned").node == "b1"
        assert c.job("needs-ffmpeg").node == "b1"
        assert c.job("zoned").reason == "Scheduled"


def test_a_job_that_fits_nowhere_does_not_block_the_ones_behind() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("picky", "live", nodeSelector="{gpu: 'yes'}") + job("plain", "batch"))
        idle_node(c)
        c.reconcile()
        assert c.job("picky").status == "pending"
        assert c.job("plain").status == "assigned"


def test_suspended_jobs_wait_until_resumed() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("s", "live", suspend="true") + job("other", "batch"))
        idle_node(c, slots=2)
        c.reconcile()
        assert c.job("s").status == "pending"
        assert c.job("other").status == "assigned"
        c.apply(SCENARIOS + job("s", "live", suspend="false"))
        c.reconcile()
        assert c.job("s").status == "assigned"


def test_job_waits_for_its_scenario() -> None:
    with Cluster() as c:
        c.apply(job("early", scenario="later"))
        idle_node(c)
        c.reconcile()
        assert (c.job("early").status, c.job("early").reason) == ("pending", "ScenarioNotFound")
        c.apply("apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata: {name: later}\nspec: {command: [\"true\"]}\n")
        c.reconcile()
        assert c.job("early").status == "assigned"


def test_cordoned_node_gets_no_new_work_but_keeps_running_work() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("a"))
        idle_node(c)
        c.reconcile()
        c.report("a", "running")
        c.apply("apiVersion: ffrtmp.io/v1\nkind: Node\nmetadata: {name: w1}\nspec: {unschedulable: true}\n")
        c.apply(SCENARIOS + job("b"))
        c.reconcile()
        c.report("a", "completed")
        c.reconcile()
        assert (c.job("a").status, c.job("b").status) == ("completed", "pending")


def test_queue_statistics() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("v1", "live") + job("v2", "live") + job("h", "high") + job("b", "batch"))
        idle_node(c)
        c.reconcile()
        stats = c.queue_stats()
        assert stats["totalPending"] == 3 and stats["totalAssigned"] == 1
        assert stats["byPriority"] == {"live": 1, "high": 1, "medium": 0, "low": 0, "batch": 1}
        manager = PriorityQueueManager(c.store, controller_config=c.config, clock=c.now)
        statistics = manager.get_queue_statistics()
        assert statistics.total_pending == 3
        assert statistics.by_priority[Priority.LIVE] == 1


def test_manager_next_job_and_priority_change() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("a", "low") + job("b", "medium"))
        manager = PriorityQueueManager(c.store, controller_config=c.config, clock=c.now)
        next_job = manager.get_next_job()
        assert next_job is not None and next_job.name == "b"
        manager.set_job_priority("a", Priority.HIGH)
        next_job = manager.get_next_job()
        assert next_job is not None and next_job.name == "a"
        assert c.job("a").priority == "high"
        updated = c.audit(entity="job/a", event_type="job.updated")
        assert updated[-1].details["changed"] == ["priority"]


def test_manager_next_job_skips_ineligible() -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + job("s", "live", suspend="true"))
        manager = PriorityQueueManager(c.store, controller_config=c.config, clock=c.now)
        assert manager.get_next_job() is None


@pytest.mark.parametrize("slots", [1, 3])
def test_heartbeat_path_fills_only_the_calling_node(slots: int) -> None:
    with Cluster() as c:
        c.apply(SCENARIOS + "".join(job(f"j{i}") for i in range(5)))
        reply = c.heartbeat("w1", slots=slots)
        assert len(reply.assignments) == slots
        assert sorted(a.job for a in reply.assignments) == [f"j{i}" for i in range(slots)]
        assert reply.assignments[0].command == ["sleep", "1"]
        again = c.heartbeat("w1", slots=slots)
        assert [a.job for a in again.assignments] == [a.job for a in reply.assignments]  # resent
        held = [(a.job, a.attempt) for a in reply.assignments]
        assert c.heartbeat("w1", slots=slots, running=held).assignments == []
