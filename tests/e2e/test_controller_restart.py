"""End to end, the controller's own faults: `kill -9` and a restart on the same database."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import NODE_TIMEOUT, LiveFarm, wait_for

pytestmark = pytest.mark.e2e


def test_controller_kill_9_and_restart_loses_nothing(live: LiveFarm) -> None:
    live.start_workers("crash-a", "crash-b", slots=2)
    # As many jobs as slots, all running when the controller dies; they end while it is
    # down, and their reports wait for it. (An assignment whose `running` report could
    # not be received meanwhile is tested with a frozen clock: tests/reconcile.)
    before = [f"before-{i}" for i in range(4)]
    for name in before:
        live.submit(name, parameters={"sleep": 1.0})
    wait_for(lambda: live.admin.queue_stats()["totalRunning"] == len(before), 10, "every job to run")
    live.kill_controller()
    # Down for longer than the node timeout: heartbeats it can't receive must not kill nodes.
    time.sleep(NODE_TIMEOUT + 0.5)
    live.start_controller()
    after = [f"after-{i}" for i in range(4)]
    for name in after:
        live.submit(name)
    wait_for(lambda: live.all_completed(before + after), 20, "every job to complete")
    for name in before + after:
        job = live.job(name)
        assert (job["status"], job["attempt"], job["retryCount"]) == ("completed", 1, 0), job
        assert live.runs_of(name)["done"] == [["1"]]
    for node in ("crash-a", "crash-b"):
        assert [to for to, _ in live.node_transitions(node)] == ["ready"]
