"""The worker agent against a scripted controller: reports, fencing, draining (real processes)."""

from __future__ import annotations

import queue
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
        self.reports: list[tuple[str, int, str]] = []
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
            self.reports.append((job, attempt, state))
        return {"job": job, "attempt": attempt, "status": state, "applied": True}


@pytest.fixture
def controller() -> FakeController:
    return FakeController()


def start(controller: FakeController, **settings: Any) -> tuple[Worker, threading.Thread]:
    worker = Worker(WorkerSettings(name="w1", heartbeat_interval_seconds=0.05, kill_grace_seconds=1,
                                   **settings), client=controller)  # type: ignore[arg-type]
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


def test_a_stuck_report_of_one_attempt_does_not_hold_back_another(controller: FakeController) -> None:
    released = threading.Event()

    def refuse(job: str, attempt: int, state: str) -> ApiError | None:
        if job == "stuck" and not released.is_set():
            return ApiError(0, "Unreachable", "no route")
        return None

    controller.refuse = refuse
    worker, thread = start(controller, slots=2)
    controller.assign("stuck", SLEEP)
    wait_until(lambda: worker.held() == [("stuck", 1)])
    controller.assign("other", SLEEP)
    wait_until(lambda: ("other", 1, "running") in controller.reports)
    assert ("stuck", 1, "running") not in controller.reports
    released.set()
    wait_until(lambda: ("stuck", 1, "running") in controller.reports)
    worker.drain()
    worker.drain()  # twice: no grace
    thread.join(10)
    assert not thread.is_alive()


def test_a_fenced_attempt_is_killed_and_no_longer_held(controller: FakeController) -> None:
    worker, thread = start(controller)
    controller.assign("j", SLEEP)
    wait_until(lambda: ("j", 1, "running") in controller.reports)
    pid = worker.executions[("j", 1)].pid
    controller.to_cancel.append({"job": "j", "attempt": 1})
    wait_until(lambda: worker.held() == [] and not worker.executions)
    assert not [r for r in controller.reports if r[2] != "running"]  # no final report for it
    wait_until(lambda: gone(pid))
    worker.drain()
    thread.join(10)


def test_drain_beats_through_the_grace_hands_back_then_says_goodbye(controller: FakeController) -> None:
    worker, thread = start(controller, slots=2, drain_grace_seconds=0.6)
    controller.assign("quick", [PY, "-c", "import time; time.sleep(0.2)"])
    controller.assign("long", SLEEP)
    wait_until(lambda: {("quick", 1, "running"), ("long", 1, "running")} <= set(controller.reports))
    began = time.monotonic()
    worker.drain()
    controller.assign("late", QUICK)  # offered while draining: not started
    thread.join(10)
    assert not thread.is_alive()
    assert ("quick", 1, "completed") in controller.reports
    assert ("long", 1, "released") in controller.reports
    assert not [r for r in controller.reports if r[0] == "late"]
    draining = [b for b in controller.beats if b["draining"]]
    assert len(draining) >= 3  # every interval during the grace, not silence
    assert draining[-1]["running"] == [] and draining[-1]["at"] - began >= 0.6
    # The goodbye comes after the hand-back was acknowledged.
    assert all(b["running"] for b in draining[:-1])
    assert worker.stats["released"] == 1 and worker.stats["completed"] == 1


def test_a_deadline_kills_the_attempt_and_reports_it(controller: FakeController) -> None:
    worker, thread = start(controller)
    controller.assign("slow", SLEEP, deadline=0.2)
    wait_until(lambda: ("slow", 1, "failed") in controller.reports)
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
    wait_until(lambda: ("envy", 3, "completed") in controller.reports)
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
    outbox: queue.Queue[_Report | None] = queue.Queue()
    outbox.put(_Report("j", 1, "running", final=False))
    outbox.put(_Report("j", 1, final, exit_code=0 if final == "completed" else 2))
    worker._report_loop(("j", 1), outbox)  # the reporter thread's loop, here in the test's thread
    assert [state for _, _, state in controller.reports] == sent
    assert worker.held() == []
