"""Fencing, idempotent reports, worker-reported outcomes and operator actions."""

from __future__ import annotations

import pytest

import controller
from controller.farm import Conflict, InvalidRequest, NotFound, WrongNode
from controller.testing import Cluster

MANIFESTS = """
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: enc}
spec: {command: [sleep, "{seconds}"], defaults: {seconds: 1}}
---
apiVersion: ffrtmp.io/v1
kind: Job
metadata: {name: a}
spec:
  scenario: enc
  maxRetries: 2
  retryPolicy: {failOnExitCodes: [2]}
"""


def started(c: Cluster, node: str = "w1") -> int:
    c.apply(MANIFESTS)
    c.heartbeat(node)
    c.reconcile()
    c.report("a", "running")
    return c.job("a").attempt


def test_each_assignment_increments_the_attempt() -> None:
    with Cluster() as c:
        assert started(c) == 1
        c.tick(61)
        c.reconcile()
        c.tick(5)  # the retry delay
        c.heartbeat("w2")
        assert (c.job("a").attempt, c.job("a").node) == (2, "w2")


def test_report_for_an_old_attempt_is_refused_and_audited() -> None:
    with Cluster() as c:
        started(c)
        c.tick(61)
        c.reconcile()  # w1 dead, attempt 1 requeued
        c.tick(5)
        c.heartbeat("w2")  # attempt 2 on w2
        before = c.job("a")
        with pytest.raises(controller.StaleAttempt):
            c.report("a", "completed", attempt=1)
        after = c.job("a")
        assert (after.status, after.attempt, after.node) == (before.status, 2, "w2")
        stale = c.audit(entity="job/a", event_type="job.stale_report")
        assert len(stale) == 1 and stale[0].details["attempt"] == 1


def test_report_for_a_cancelled_job_is_stale() -> None:
    with Cluster() as c:
        started(c)
        c.cancel("a")
        with pytest.raises(controller.StaleAttempt):
            c.report("a", "completed", attempt=1)
        assert c.job("a").status == "cancelled"
        assert c.heartbeat("w1", running=[("a", 1)]).cancel == [("a", 1)]


def test_the_same_report_twice_is_applied_once() -> None:
    with Cluster() as c:
        started(c)
        first = c.report("a", "completed", attempt=1)
        second = c.report("a", "completed", attempt=1)
        assert (first.applied, second.applied) == (True, False)
        transitions = c.audit(entity="job/a", event_type="job.transition")
        assert [t.details["to"] for t in transitions] == ["assigned", "running", "completed"]
        assert c.report("a", "running", attempt=1).applied is False  # a late duplicate


def test_failed_report_twice_counts_one_retry() -> None:
    with Cluster() as c:
        started(c)
        c.report("a", "failed", exit_code=1)
        c.report("a", "failed", attempt=1, exit_code=1)
        a = c.job("a")
        assert (a.status, a.retry_count, a.reason) == ("pending", 1, "ExitCode")


def test_completed_without_a_running_report_passes_through_running() -> None:
    with Cluster() as c:
        c.apply(MANIFESTS)
        c.heartbeat("w1")
        c.report("a", "completed", attempt=1)
        tos = [t.details["to"] for t in c.audit(entity="job/a", event_type="job.transition")]
        assert tos == ["assigned", "running", "completed"]


def test_exit_code_in_fail_list_fails_at_once() -> None:
    with Cluster() as c:
        started(c)
        c.report("a", "failed", exit_code=2)
        a = c.job("a")
        assert (a.status, a.reason, a.retry_count) == ("failed", "ExitCode", 0)


def test_exit_code_failures_exhaust_retries_with_the_last_cause() -> None:
    with Cluster(config={"faultTolerance": {"retryDelaySeconds": 0}}) as c:
        started(c)
        for _ in range(2):
            c.report("a", "failed", exit_code=1)
            c.heartbeat("w1")
            c.report("a", "running")
        c.report("a", "failed", exit_code=1)
        a = c.job("a")
        assert (a.status, a.reason, a.retry_count) == ("failed", "MaxRetriesExceeded", 2)
        assert "ExitCode" in (a.message or "")


def test_deadline_exceeded_follows_the_retry_rule() -> None:
    with Cluster() as c:
        started(c)
        c.report("a", "failed", exit_code=137, reason="DeadlineExceeded")
        assert (c.job("a").status, c.job("a").reason) == ("pending", "DeadlineExceeded")


def test_invalid_parameters_fail_at_once() -> None:
    with Cluster() as c:
        started(c)
        c.report("a", "failed", reason="InvalidParameters", message="bad resolution")
        assert (c.job("a").status, c.job("a").reason) == ("failed", "InvalidParameters")


def test_released_job_is_requeued_without_counting_a_retry() -> None:
    with Cluster() as c:
        started(c)
        c.report("a", "released")
        a = c.job("a")
        assert (a.status, a.reason, a.retry_count, a.not_before) == ("pending", "Released", 0, None)


def test_worker_restart_fences_and_requeues_what_it_lost() -> None:
    with Cluster() as c:
        started(c)
        reply = c.heartbeat("w1", running=[])  # the worker came back empty-handed
        a = c.job("a")
        assert (a.status, a.reason, a.retry_count) == ("pending", "NodeRestarted", 1)
        assert reply.cancel == []
        with pytest.raises(controller.StaleAttempt):
            c.report("a", "completed", attempt=1)


def test_manual_retry_resets_the_retry_count() -> None:
    with Cluster() as c:
        started(c)
        c.report("a", "failed", exit_code=2)
        c.retry("a")
        a = c.job("a")
        assert (a.status, a.retry_count, a.reason) == ("pending", 0, "ManualRetry")
        with pytest.raises(Conflict):
            c.retry("a")


def test_cancel_of_a_terminal_job_is_refused() -> None:
    with Cluster() as c:
        started(c)
        c.report("a", "completed")
        with pytest.raises(Conflict):
            c.cancel("a")


def test_unknown_job_and_bad_state() -> None:
    with Cluster() as c:
        with pytest.raises(NotFound):
            c.report("nope", "running", attempt=1)
        started(c)
        with pytest.raises(InvalidRequest):
            c.report("a", "exploded")


def test_immutable_fields_refused_after_pending() -> None:
    with Cluster() as c:
        started(c)
        with pytest.raises(ValueError, match=r"spec\.parameters cannot change once the job has left pending"):
            c.apply(MANIFESTS.replace("maxRetries: 2", "maxRetries: 2\n  parameters: {seconds: 9}"))
        assert c.job("a").parameters == {}
        c.apply(MANIFESTS.replace("maxRetries: 2", "maxRetries: 5"))  # mutable: fine
        assert c.job("a").max_retries == 5


def test_missing_placeholder_is_refused_when_the_scenario_is_known() -> None:
    with Cluster() as c:
        c.apply(MANIFESTS)
        bad = ("apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata: {name: s2}\n"
               "spec: {command: [echo, '{x}']}\n---\napiVersion: ffrtmp.io/v1\nkind: Job\n"
               "metadata: {name: b}\nspec: {scenario: s2}\n")
        with pytest.raises(ValueError, match=r"\{x\}"):
            c.apply(bad)


def test_delete_node_requeues_its_jobs() -> None:
    with Cluster() as c:
        started(c)
        c.farm.delete_node("w1")
        assert (c.job("a").status, c.job("a").reason) == ("pending", "NodeLost")
        assert c.audit(entity="node/w1")[-1].event_type == "node.deleted"


def test_delete_job_cancels_then_deletes_and_keeps_history() -> None:
    with Cluster() as c:
        started(c)
        c.farm.delete_job("a")
        assert [j.name for j in c.jobs()] == []
        events = [(e.event_type, e.details.get("to")) for e in c.audit(entity="job/a")]
        assert events[-2:] == [("job.transition", "cancelled"), ("job.deleted", None)]


def test_a_worker_token_reporting_on_another_nodes_attempt_is_refused_in_the_farm() -> None:
    with Cluster() as c:
        started(c)  # attempt 1 runs on w1
        with pytest.raises(WrongNode):
            c.farm.report("a", 1, "completed", exit_code=0, node="w2", node_bound=True)
        # Refused before fencing: no stale-report audit row, nothing changed.
        assert c.audit(entity="job/a", event_type="job.stale_report") == []
        assert c.job("a").status == "running"
        # Without `node_bound` (an admin naming a node) the mismatch is a stale report.
        with pytest.raises(controller.StaleAttempt):
            c.farm.report("a", 1, "completed", exit_code=0, node="w2")
        done = c.farm.report("a", 1, "completed", exit_code=0, node="w1", node_bound=True)
        assert (done.status, done.applied) == ("completed", True)


def test_an_idle_empty_handed_beat_still_gets_work_and_its_assignment_again() -> None:
    with Cluster() as c:
        assert c.heartbeat("w1", running=[]).assignments == []  # nothing pending, nothing bound
        c.apply(MANIFESTS)
        first = c.heartbeat("w1", running=[])  # idle node: the job is bound by this beat
        assert [(a.job, a.attempt) for a in first.assignments] == [("a", 1)]
        again = c.heartbeat("w1", running=[])  # not started yet: handed out again, not lost
        assert [(a.job, a.attempt) for a in again.assignments] == [("a", 1)]
        assert c.job("a").status == "assigned"
