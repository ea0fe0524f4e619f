"""The worker agent: heartbeats, long-polls for work, runs it, reports, drains on SIGTERM.

Threads:
- the heartbeat loop (the caller's thread): sends what it holds, long-polls for work
  while it has a free slot, starts assignments, stops fenced attempts;
- one watcher per attempt: waits for the process, enforces `activeDeadlineSeconds`,
  queues the final report;
- the reporter: sends reports in order, retrying network errors with jittered
  backoff capped at the heartbeat interval (reports are idempotent on the
  controller, so a retry never applies twice).

The controller talks to the worker only through the answers to these calls.
"""

from __future__ import annotations

import logging
import queue
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.client import ApiError, Client
from controller.worker import runner

log = logging.getLogger("controller.worker")

Key = tuple[str, int]
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class WorkerSettings:
    """How a worker runs (the `ffrtmp worker` flags)."""

    name: str
    server: str | None = None
    token: str | None = None
    slots: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat_interval_seconds: float = 10.0
    """Used until the controller's first answer says otherwise."""
    drain_grace_seconds: float = 30.0
    """On SIGTERM, how long running jobs may finish before they are handed back."""
    kill_grace_seconds: float = runner.KILL_GRACE_SECONDS
    long_poll: bool = True


def detect_labels() -> dict[str, str]:
    """Labels this machine advertises: `ffmpeg: "true"` and its version when ffmpeg is on PATH."""
    path = shutil.which("ffmpeg")
    if path is None:
        return {}
    labels = {"ffmpeg": "true"}
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=10, check=False)
        words = out.stdout.split()
        if len(words) >= 3 and words[0] == "ffmpeg" and words[1] == "version":
            version = _LABEL_VALUE.sub("-", words[2]).strip("-._")[:63]
            if version:
                labels["ffmpeg-version"] = version
    except (OSError, subprocess.SubprocessError):
        pass
    return labels


@dataclass
class _Report:
    job: str
    attempt: int
    state: str
    exit_code: int | None = None
    message: str | None = None
    log_tail: str | None = None
    reason: str | None = None
    final: bool = True


class Worker:
    """One worker process's state and loops."""

    def __init__(
        self,
        settings: WorkerSettings,
        client: Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client or Client(settings.server, settings.token)
        self.clock = clock
        self.labels = {**detect_labels(), **settings.labels}
        self.interval = settings.heartbeat_interval_seconds
        self.executions: dict[Key, runner.Execution] = {}
        self.unreported: set[Key] = set()
        """Attempts that finished and whose final report is not acknowledged yet."""
        self._lock = threading.Lock()
        self._reports: queue.Queue[_Report | None] = queue.Queue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._reporter: threading.Thread | None = None
        self._failures = 0
        self.stats = {"started": 0, "completed": 0, "failed": 0, "released": 0, "fenced": 0}

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until `drain()` (SIGTERM) has handed everything back or finished it."""
        self._reporter = threading.Thread(target=self._report_loop, name="ffrtmp-reporter", daemon=True)
        self._reporter.start()
        log.info("[Worker] %s serving %s with %d slot(s), labels %s", self.settings.name,
                 self.client.server, self.settings.slots, self.labels)
        try:
            while not self._draining.is_set():
                self._beat_once()
            self._finish_drain()
        finally:
            self._reports.put(None)
            self._reporter.join(timeout=self.interval + 5)

    def drain(self) -> None:
        """Stop taking work; running jobs get `drain_grace_seconds`, then are handed back."""
        if not self._draining.is_set():
            log.info("[Worker] %s draining: no new work", self.settings.name)
        self._draining.set()
        self._wake.set()

    def held(self) -> list[Key]:
        """Every attempt this worker holds: running, or finished with the report pending."""
        with self._lock:
            return sorted(set(self.executions) | self.unreported)

    def free_slots(self) -> int:
        """Slots not taken by a running attempt."""
        with self._lock:
            return self.settings.slots - len(self.executions)

    # --- heartbeats ----------------------------------------------------------------------------

    def _beat_once(self) -> None:
        idle = self.free_slots() > 0
        wait = self.interval if (self.settings.long_poll and idle) else 0.0
        began = self.clock()
        try:
            reply = self.client.heartbeat(self.settings.name, self.settings.slots, self.labels,
                                          self.held(), wait_seconds=wait)
        except ApiError as exc:
            if exc.status in (401, 403):
                log.error("[Worker] heartbeat refused: %s", exc)
            else:
                log.warning("[Worker] heartbeat failed: %s", exc)
            self._pause(self._backoff())
            return
        self._failures = 0
        self.interval = float(reply.get("heartbeatIntervalSeconds") or self.interval)
        for ref in reply.get("cancel", []):
            self._stop_attempt((ref["job"], ref["attempt"]), "cancel")
        for assignment in reply.get("assignments", []):
            self._start(assignment)
        # Beat at least once per interval; a finished job (a freed slot) wakes us at once.
        elapsed = self.clock() - began
        if not reply.get("assignments") and (not idle or not self.settings.long_poll):
            self._pause(max(self.interval - elapsed, 0.0))

    def _backoff(self) -> float:
        """Jittered exponential backoff capped at the heartbeat interval."""
        self._failures += 1
        ceiling = min(self.interval, 0.1 * (2 ** min(self._failures, 10)))
        return random.uniform(ceiling / 2, ceiling)

    def _pause(self, seconds: float) -> None:
        if seconds > 0 and self._wake.wait(seconds):
            self._wake.clear()

    # --- attempts ------------------------------------------------------------------------------

    def _start(self, assignment: Mapping[str, Any]) -> None:
        key: Key = (assignment["job"], assignment["attempt"])
        with self._lock:
            if key in self.executions or key in self.unreported:
                return
        if self._draining.is_set():
            self._reports.put(_Report(key[0], key[1], "released", message="worker is draining"))
            return
        deadline = assignment.get("activeDeadlineSeconds")
        try:
            execution = runner.start(key[0], key[1], assignment["command"], deadline, self.clock)
        except (OSError, ValueError) as exc:
            log.warning("[Worker] cannot start %s attempt %d: %s", key[0], key[1], exc)
            with self._lock:
                self.unreported.add(key)
            self._reports.put(_Report(key[0], key[1], "failed", exit_code=127,
                                      message=f"cannot start {assignment['command'][:1]}: {exc}"))
            return
        with self._lock:
            self.executions[key] = execution
        self.stats["started"] += 1
        log.info("[Worker] started %s attempt %d (pid %d)", key[0], key[1], execution.pid)
        self._reports.put(_Report(key[0], key[1], "running", final=False))
        threading.Thread(target=self._watch, args=(execution,), name=f"watch-{key[0]}", daemon=True).start()

    def _watch(self, execution: runner.Execution) -> None:
        key: Key = (execution.job, execution.attempt)
        while True:
            timeout = None if execution.deadline is None else max(execution.deadline - self.clock(), 0.0)
            try:
                execution.process.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                log.info("[Worker] %s attempt %d exceeded its deadline", *key)
                execution.kill("deadline", self.settings.kill_grace_seconds)
        outcome = execution.outcome()
        with self._lock:
            self.executions.pop(key, None)
            if execution.killed_for in ("cancel",):
                self._wake.set()
                return
            self.unreported.add(key)
        if execution.killed_for == "drain":
            self._reports.put(_Report(key[0], key[1], "released", message="handed back by a draining worker",
                                      log_tail=execution.tail.text()))
        else:
            self._reports.put(_Report(key[0], key[1], outcome.state, outcome.exit_code, outcome.message,
                                      execution.tail.text(), outcome.reason))
        self._wake.set()

    def _stop_attempt(self, key: Key, why: str) -> None:
        with self._lock:
            execution = self.executions.get(key)
            self.unreported.discard(key)
        if execution is not None and execution.poll() is None:
            log.info("[Worker] stopping %s attempt %d (%s)", key[0], key[1], why)
            self.stats["fenced"] += 1
            execution.kill(why, self.settings.kill_grace_seconds)

    # --- reports -------------------------------------------------------------------------------

    def _report_loop(self) -> None:
        while True:
            report = self._reports.get()
            if report is None:
                return
            self._deliver(report)

    def _deliver(self, report: _Report) -> None:
        key: Key = (report.job, report.attempt)
        failures = 0
        while True:
            try:
                self.client.report(report.job, report.attempt, report.state,  # type: ignore[arg-type]
                                   exit_code=report.exit_code, message=report.message,
                                   log_tail=report.log_tail, reason=report.reason)
                break
            except ApiError as exc:
                if exc.status == 409:
                    # Fenced: the attempt is no longer ours. Stop it if it still runs.
                    log.info("[Worker] %s attempt %d is stale: %s", report.job, report.attempt, exc.message)
                    self._stop_attempt(key, "cancel")
                    break
                if exc.status and exc.status != 429 and exc.status < 500:
                    log.error("[Worker] report of %s attempt %d refused: %s", report.job, report.attempt, exc)
                    break
                failures += 1
                ceiling = min(self.interval, 0.1 * (2 ** min(failures, 10)))
                if self._stopping.wait(random.uniform(ceiling / 2, ceiling)):
                    return
        if report.final:
            with self._lock:
                self.unreported.discard(key)
            self.stats[report.state if report.state in self.stats else "failed"] += 1

    # --- draining ------------------------------------------------------------------------------

    def _finish_drain(self) -> None:
        deadline = self.clock() + self.settings.drain_grace_seconds
        while self.free_slots() < self.settings.slots and self.clock() < deadline:
            self._wake.wait(min(0.2, max(deadline - self.clock(), 0.0)))
            self._wake.clear()
        with self._lock:
            leftovers = list(self.executions.values())
        for execution in leftovers:
            execution.kill("drain", self.settings.kill_grace_seconds)
        # Wait for the watchers to queue the hand-backs, then for the reports to go out.
        end = self.clock() + self.settings.kill_grace_seconds + 5
        while self.executions and self.clock() < end:
            time.sleep(0.05)
        flush_end = self.clock() + max(self.interval, 5.0)
        while self.unreported and self.clock() < flush_end:
            time.sleep(0.05)
        self._stopping.set()
        log.info("[Worker] %s drained (%s)", self.settings.name, self.stats)
