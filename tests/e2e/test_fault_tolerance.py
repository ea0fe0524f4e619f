"""End to end, worker faults: kill -9, partitions, restarts under the same name, drains."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.conftest import NODE_TIMEOUT, LiveFarm, gone, wait_for

pytestmark = pytest.mark.e2e


def test_kill_9_of_a_worker_mid_job_requeues_it_to_the_other(live: LiveFarm) -> None:
    live.start_workers("k9-a", "k9-b")
    live.submit("victim", parameters={"first_sleep": 60, "sleep": 0.2})
    first = live.wait_job("victim", "running")
    wait_for(lambda: live.pids("victim", 1), 5, "attempt 1 to record its pid")
    live.workers[str(first["node"])].process.kill()
    job = live.wait_job("victim", "completed", timeout=NODE_TIMEOUT + 10)
    assert job["node"] != first["node"]
    assert (job["retryCount"], job["attempt"]) == (1, 2)
    assert ("pending", "NodeLost") in live.reasons("victim")
    # The orphaned attempt died with its worker: it never finished, nothing ran twice.
    assert all(gone(p) for p in live.pids("victim", 1))
    assert live.runs_of("victim")["done"] == [["2"]]


def test_a_partitioned_worker_is_fenced_when_it_returns(live: LiveFarm) -> None:
    a = live.start_worker("split-a", slots=2)
    live.submit("short", parameters={"first_sleep": 1.5, "sleep": 0.2})
    live.submit("long", parameters={"sleep": 60})
    for name in ("short", "long"):
        live.wait_job(name, "running")
    a.signal(signal.SIGSTOP)  # its jobs go on; it can neither report nor heartbeat
    try:
        live.start_worker("split-b", slots=2)
        wait_for(lambda: live.job("short")["status"] == "completed"
                 and (j := live.job("long"))["status"] == "running" and j["attempt"] == 2,
                 NODE_TIMEOUT + 10, "both jobs to move to split-b")
        assert live.admin.get_node("split-a")["status"] == "dead"
    finally:
        a.signal(signal.SIGCONT)
    # Attempt 1 of `short` finished during the partition: its late report is refused ...
    stale = wait_for(lambda: [e for e in live.admin.audit(event_type="job.stale_report", limit=1000)["items"]
                              if e["entityId"] == "short"], 10, "the stale report of short")
    assert (stale[0]["details"]["attempt"], stale[0]["details"]["state"]) == (1, "completed")
    # ... and attempt 1 of `long`, still running there, is killed by its worker.
    long_pids = live.pids("long", 1)
    wait_for(lambda: all(gone(p) for p in long_pids), 10, f"the stale attempt's pids {long_pids} to be gone")
    assert a.process.poll() is None
    short = live.job("short")
    assert (short["node"], short["attempt"], short["retryCount"]) == ("split-b", 2, 1)
    assert [r for r in live.reasons("short") if r[0] == "completed"] == [("completed", "Succeeded")]
    long = live.job("long")
    assert (long["status"], long["node"], long["attempt"]) == ("running", "split-b", 2)


def test_a_worker_restarted_under_the_same_name_is_fenced_and_nothing_runs_twice(live: LiveFarm) -> None:
    a = live.start_worker("again-a", slots=2)
    names = ["again-1", "again-2"]
    for name in names:  # attempt 1 outlives the restart (if it were not killed); attempt 2 is quick
        live.submit(name, parameters={"first_sleep": 60, "sleep": 0.2})
    for name in names:
        live.wait_job(name, "running")
    old = {name: wait_for(lambda n=name: live.pids(n, 1), 5, f"{name}'s pid") for name in names}
    again = live.start_worker("again-a", slots=2, token=a.token, gated=True)
    a.process.kill()
    again.release()  # well within the node timeout: the restart, not the timeout, must fence
    for name in names:
        job = live.wait_job(name, "completed", timeout=15)
        assert (job["attempt"], job["retryCount"]) == (2, 1), job
        assert ("pending", "NodeRestarted") in live.reasons(name)
        assert all(gone(p) for p in old[name])
        assert live.runs_of(name)["done"] == [["2"]]
    assert ("dead", "HeartbeatTimeout") not in live.node_transitions("again-a")
    assert [to for to, _ in live.node_transitions("again-a")] == ["ready"]


def test_sigterm_drains_hands_back_and_leaves(live: LiveFarm) -> None:
    # A grace longer than the node timeout: the draining worker must go on heartbeating.
    grace = NODE_TIMEOUT + 1.0
    a = live.start_worker("drain-a", slots=2, drain_seconds=grace)
    live.submit("finishes", parameters={"sleep": 1.0})
    live.submit("unfinished", parameters={"sleep": 60})
    for name in ("finishes", "unfinished"):
        live.wait_job(name, "running")
    began = time.monotonic()
    a.signal(signal.SIGTERM)
    live.submit("newcomer")
    assert a.wait(grace + 10) == 0
    assert time.monotonic() - began >= grace - 0.1
    finished = live.job("finishes")
    assert (finished["status"], finished["node"], finished["retryCount"]) == ("completed", "drain-a", 0)
    unfinished = live.job("unfinished")
    assert (unfinished["status"], unfinished["reason"], unfinished["retryCount"]) == ("pending", "Released", 0)
    assert all(gone(p) for p in live.pids("unfinished", 1))
    # Nothing new started there, nothing was lost; the node left, so nothing waits on it.
    assert live.runs_of("newcomer")["start"] == []
    assert live.job("newcomer")["status"] == "pending"
    assert live.node_transitions("drain-a") == [("ready", "Heartbeat"), ("dead", "Released")]
    # Handed-back work runs elsewhere, its retry count unchanged.
    live.start_worker("drain-b", slots=2)
    live.wait_job("newcomer", "completed")
    moved = wait_for(lambda: (j := live.job("unfinished"))["status"] == "running" and j, 10,
                     "the handed-back job to run")
    assert (moved["node"], moved["retryCount"]) == ("drain-b", 0)
    # While drain-a drained, the pass may bind handed-back work to it again (handed back by its
    # next beat, Released, never a retry): the node stays schedulable until it leaves.
    for name in ("unfinished", "newcomer"):
        assert {r for r in live.reasons(name) if r[0] == "pending"} <= {("pending", "Released")}
