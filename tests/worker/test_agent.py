"""The worker agent against a scripted controller: reports, fencing, draining (real processes)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from controller.client import ApiError
from controller.worker.agent import Worker, WorkerSettings, _Report

PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(60)"]
QUICK = [PY, "-c", "pass"]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class FakeController:
    """Answers heartbeats from a script of assignments; records every call."""

    def __init__(self) -> None:
        self.server = "fake"
        self.lock = threading.Lock()
        self.beats: list[dict[str, Any]] = []
        self.received: list[tuple[str, int, str]] = []
        self.batches: list[int] = []
        """The size of each `reports` request."""
        self.to_assign: list[dict[str, Any]] = []
        self.to_cancel: list[dict[str, Any]] = []
        self.refuse: Callable[[str, int, str], ApiError | None] = lambda job, attempt, state: None

    def assign(self, job: str, command: list[str], attempt: int = 1, deadline: float | None = None) -> None:
        with self.lock:
            self.to_assign.append({"job": job, "attempt": attempt, "command": command,
                                   "activeDeadlineSeconds": deadline})

    def heartbeat(self, node: str, slots: int | None = None, labels: Any = None,
                  running: Sequence[tuple[str, int]] | None = None, wait_seconds: float = 0.0,
                  draining: bool = False) -> dict[str, Any]:
        with self.lock:
            self.beats.append({"running": list(running or []), "draining": draining, "at": time.monotonic()})
            assignments, self.to_assign = ([], self.to_assign) if draining else (self.to_assign, [])
            cancel, self.to_cancel = self.to_cancel, []
        if not assignments and not cancel and wait_seconds:
            time.sleep(min(wait_seconds, 0.05))
        return {"assignments": assignments, "cancel": cancel, "heartbeatIntervalSeconds": 0.05}

    def report(self, job: str, attempt: int, state: str, **_: Any) -> dict[str, Any]:
        error = self.refuse(job, attempt, state)
        if error is not None:
            raise error
        with self.lock:
            self.received.append((job, attempt, state))
        return {"job": job, "attempt": attempt, "status": state, "applied": True}

    def reports(self, node: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The batch route: a refusal the single route answers 4xx or 500 is one item's error."""
        with self.lock:
            self.batches.append(len(items))
        results = []
        for item in items:
            try:
                results.append({**self.report(item["job"], item["attempt"], item["state"]), "error": None})
            except ApiError as exc:
                if exc.status not in (403, 404, 409, 500):
                    raise  # the whole request failed (unreachable, 429, 503)
                results.append({"job": item["job"], "attempt": item["attempt"], "status": None,
                                "applied": False, "error": {"code": exc.code, "message": exc.message}})
        return {"results": results}


@pytest.fixture
def controller() -> FakeController:
    return FakeController()


def start(controller: FakeController, **settings: Any) -> tuple[Worker, threading.Thread]:
    worker = Worker(WorkerSettings(name="w1", heartbeat_interval_seconds=0.05, kill_grace_seconds=1,
                                   **settings), client=controller)  # type: ignore[arg-type]
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


def test_a_report_the_controller_fails_on_is_sent_again_without_holding_back_others(
    controller: FakeController,
) -> None:
    released = threading.Event()

    def refuse(job: str, attempt: int, state: str) -> ApiError | None:
        if job == "stuck" and not released.is_set():
            return ApiError(500, "InternalError", "a bug")
        return None

    controller.refuse = refuse
    worker, thread = start(controller, slots=2)
    controller.assign("stuck", SLEEP)
    wait_until(lambda: worker.held() == [("stuck", 1)])
    controller.assign("other", SLEEP)
    wait_until(lambda: ("other", 1, "running") in controller.received)
    assert ("stuck", 1, "running") not in controller.received
    released.set()
    wait_until(lambda: ("stuck", 1, "running") in controller.received)
    worker.drain()
    worker.drain()  # twice: no grace
    thread.join(10)
    assert not thread.is_alive()


def test_reports_that_queued_up_go_in_one_request_in_order(controller: FakeController) -> None:
    worker = Worker(WorkerSettings(name="w1"), client=controller)  # type: ignore[arg-type]
    worker.unreported.update({("a", 1), ("b", 1), ("c", 2)})
    for report in (_Report("a", 1, "running", final=False), _Report("b", 1, "running", final=False),
                   _Report("a", 1, "failed", exit_code=3), _Report("b", 1, "completed", exit_code=0),
                   _Report("c", 2, "released")):
        worker._outbox.append(report)
    worker._deliver(worker._take_reports())  # the reporter thread's step, here in the test's thread
    assert controller.batches == [4]  # b's `running` folded into its `completed`
    assert controller.received == [("a", 1, "running"), ("a", 1, "failed"), ("b", 1, "completed"),
                                  ("c", 2, "released")]
    assert worker.held() == []
    assert worker.stats == {**worker.stats, "failed": 1, "completed": 1, "released": 1}


def test_a_stale_report_in_a_batch_stops_its_attempt_and_the_others_apply(controller: FakeController) -> None:
    controller.refuse = lambda job, attempt, state: ApiError(409, "StaleAttempt", "fenced") if job == "old" else None
    worker, thread = start(controller, slots=2)
    controller.assign("old", SLEEP)
    controller.assign("new", SLEEP)
    wait_until(lambda: ("new", 1, "running") in controller.received and ("old", 1) not in worker.executions)
    assert worker.stats["fenced"] == 1
    worker.drain()
    worker.drain()
    thread.join(10)


def test_a_controller_without_the_batch_route_gets_single_reports(controller: FakeController) -> None:
    def no_route(node: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        raise ApiError(404, "NotFound", "no route POST /nodes/w1/reports")

    controller.reports = no_route  # type: ignore[method-assign]
    worker, thread = start(controller)
    controller.assign("j", QUICK)
    wait_until(lambda: ("j", 1, "completed") in controller.received)
    assert worker._batches is False
    worker.drain()
    thread.join(10)


def test_reports_are_sent_again_while_the_controller_is_unreachable(controller: FakeController) -> None:
    down = threading.Event()
    down.set()
    controller.refuse = lambda job, attempt, state: ApiError(0, "Unreachable", "down") if down.is_set() else None
    worker, thread = start(controller)
    controller.assign("j", QUICK)
    wait_until(lambda: worker.stats["started"] == 1 and not worker.executions)
    time.sleep(0.2)
    assert not controller.received and worker.held() == [("j", 1)]
    down.clear()
    wait_until(lambda: ("j", 1, "completed") in controller.received and worker.held() == [])
    worker.drain()
    thread.join(10)


def test_a_fenced_attempt_is_killed_and_no_longer_held(controller: FakeController) -> None:
    worker, thread = start(controller)
    controller.assign("j", SLEEP)
    wait_until(lambda: ("j", 1, "running") in controller.received)
    pid = worker.executions[("j", 1)].pid
    controller.to_cancel.append({"job": "j", "attempt": 1})
    wait_until(lambda: worker.held() == [] and not worker.executions)
    assert not [r for r in controller.received if r[2] != "running"]  # no final report for it
    wait_until(lambda: gone(pid))
    worker.drain()
    thread.join(10)


def test_drain_beats_through_the_grace_hands_back_then_says_goodbye(controller: FakeController) -> None:
    worker, thread = start(controller, slots=2, drain_grace_seconds=0.6)
    controller.assign("quick", [PY, "-c", "import time; time.sleep(0.2)"])
    controller.assign("long", SLEEP)
    wait_until(lambda: {("quick", 1, "running"), ("long", 1, "running")} <= set(controller.received))
    began = time.monotonic()
    worker.drain()
    controller.assign("late", QUICK)  # offered while draining: not started
    thread.join(10)
    assert not thread.is_alive()
    assert ("quick", 1, "completed") in controller.received
    assert ("long", 1, "released") in controller.received
    assert not [r for r in controller.received if r[0] == "late"]
    draining = [b for b in controller.beats if b["draining"]]
    assert len(draining) >= 3  # every interval during the grace, not silence
    assert draining[-1]["running"] == [] and draining[-1]["at"] - began >= 0.6
    # The goodbye comes after the hand-back was acknowledged.
    assert all(b["running"] for b in draining[:-1])
    assert worker.stats["released"] == 1 and worker.stats["completed"] == 1


def test_a_deadline_kills_the_attempt_and_reports_it(controller: FakeController) -> None:
    worker, thread = start(controller)
    controller.assign("slow", SLEEP, deadline=0.2)
    wait_until(lambda: ("slow", 1, "failed") in controller.received)
    assert worker.held() == []
    worker.drain()
    thread.join(10)


def test_jobs_get_their_attempt_but_not_the_worker_token(
    controller: FakeController, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FFRTMP_TOKEN", "ffr_secret")
    out = tmp_path / "env"
    code = ("import os, sys; open(sys.argv[1], 'w').write(' '.join("
            "os.environ.get(k, '-') for k in ('FFRTMP_JOB', 'FFRTMP_ATTEMPT', 'FFRTMP_NODE', 'FFRTMP_TOKEN')))")
    worker, thread = start(controller)
    controller.assign("envy", [PY, "-c", code, str(out)], attempt=3)
    wait_until(lambda: ("envy", 3, "completed") in controller.received)
    assert out.read_text() == "envy 3 w1 -"
    worker.drain()
    thread.join(10)


@pytest.mark.parametrize(("final", "sent"), [
    ("completed", ["completed"]),            # implies it ran: one request
    ("failed", ["running", "failed"]),       # keeps the start (a failed start has no `running`)
])
def test_a_running_report_still_queued_when_the_job_ended_is_folded_into_completed(
    controller: FakeController, final: str, sent: list[str]
) -> None:
    worker = Worker(WorkerSettings(name="w1"), client=controller)  # type: ignore[arg-type]
    worker.unreported.add(("j", 1))
    worker._outbox += [_Report("j", 1, "running", final=False),
                       _Report("j", 1, final, exit_code=0 if final == "completed" else 2)]
    worker._deliver(worker._take_reports())  # the reporter thread's step, here in the test's thread
    assert [state for _, _, state in controller.received] == sent
    assert worker.held() == []
