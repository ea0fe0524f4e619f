"""The worker agent: heartbeats, long-polls for work, runs it, reports, drains on SIGTERM.

Threads:
- the heartbeat loop (the caller's thread): sends what it holds, long-polls for work
  while it has a free slot, starts assignments, stops fenced attempts;
- the reaper (`runner.Reaper`): follows every attempt's output, exit and
  `activeDeadlineSeconds` in one selector, and queues each final report;
- the reporter: sends the queued reports, every attempt's in order (`running`, then
  the final one), all that queued up while the previous request was on the way in
  one `POST /nodes/{name}/reports`, retrying network errors with jittered backoff
  capped at the heartbeat interval (reports are idempotent on the controller, so a
  retry never applies twice). On a busy worker that is one request for many jobs;
  on an idle one, one per report, sent at once. Against a controller without that
  route (an older version), reports go one by one to the attempt's own route.

The controller talks to the worker only through the answers to these calls.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.client import ApiError, Client, attempt_report
from controller.worker import runner
from controller.worker.wire import WorkerClient

log = logging.getLogger("controller.worker")

REPORTS_PER_REQUEST = 64
"""At most this many reports in one request (final reports carry up to 16 KiB of output)."""

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
        client: WorkerClient | Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client or WorkerClient(settings.server, settings.token)
        self.clock = clock
        self.labels = {**detect_labels(), **settings.labels}
        self.interval = settings.heartbeat_interval_seconds
        self.executions: dict[Key, runner.Execution] = {}
        self.unreported: set[Key] = set()
        """Attempts that finished and whose final report is not acknowledged yet."""
        self._lock = threading.Lock()
        self._outbox: list[_Report] = []
        """Reports the reporter thread has yet to send, in the order they were queued."""
        self._queued = threading.Event()
        self._reporter: threading.Thread | None = None
        self._failures_of_reports = 0
        """Batches in a row that came back with a report the controller failed on."""
        self._batches = True
        """False once the controller turned out to have no batch report route (older version)."""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._hurry = threading.Event()
        """A second SIGTERM: end the drain's grace at once."""
        self._failures = 0
        self._base_env = {k: v for k, v in os.environ.items() if k != "FFRTMP_TOKEN"}
        """The attempts' (and the guard's) environment: the worker's own as it started,
        without its token."""
        self.guard = runner.Guard(self._base_env)
        """Kills the attempts' process groups if this worker dies (started by `run`)."""
        self.reaper = runner.Reaper(self._ended, self._overdue, clock)
        """Follows the attempts: output, exit, deadline (started by `run`)."""
        self.stats = {"started": 0, "completed": 0, "failed": 0, "released": 0, "fenced": 0}

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until `drain()` (SIGTERM) has handed everything back or finished it."""
        log.info("[Worker] %s serving %s with %d slot(s), labels %s", self.settings.name,
                 self.client.server, self.settings.slots, self.labels)
        self.guard.start()
        self.reaper.start()
        try:
            while not self._draining.is_set():
                try:
                    self._beat_once()
                except Exception:  # an answer we did not expect must not orphan running jobs
                    log.exception("[Worker] heartbeat loop error")
                    self._pause(self._backoff())
            self._finish_drain()
        finally:
            self._stopping.set()
            if self._reporter is not None:
                self._reporter.join(timeout=5)
            self.reaper.stop()
            self.guard.close()

    def drain(self) -> None:
        """Stop taking work; running jobs get `drain_grace_seconds`, then are handed back.

        A second call ends the grace at once.
        """
        if self._draining.is_set():
            log.info("[Worker] %s: draining now, without waiting for running jobs", self.settings.name)
            self._hurry.set()
        else:
            log.info("[Worker] %s draining: no new work", self.settings.name)
        self._draining.set()
        self._wake.set()

    def held(self) -> list[Key]:
        """Every attempt this worker holds: running, or finished with the report pending.

        An attempt the controller told us to stop is no longer ours, even while its
        process group is still being killed (or the controller would say so again).
        """
        with self._lock:
            running = {k for k, e in self.executions.items() if e.killed_for != "cancel"}
            return sorted(running | self.unreported)

    def free_slots(self) -> int:
        """Slots not taken by a running attempt."""
        with self._lock:
            return self.settings.slots - len(self.executions)

    # --- heartbeats ----------------------------------------------------------------------------

    def _beat_once(self, until: float | None = None) -> None:
        """One heartbeat (a long-poll when a slot is free), then what it says; paces the loop.

        Draining, the beat tells the controller so: it binds nothing new to this node,
        and nothing is started. `until` bounds the pause after the beat.
        """
        draining = self._draining.is_set()
        idle = self.free_slots() > 0
        wait = self.interval if (self.settings.long_poll and idle and not draining) else 0.0
        began = self.clock()
        try:
            reply = self.client.heartbeat(self.settings.name, self.settings.slots, self.labels,
                                          self.held(), wait_seconds=wait, draining=draining)
        except ApiError as exc:
            if exc.status in (401, 403):
                log.error("[Worker] heartbeat refused: %s", exc)
            else:
                log.warning("[Worker] heartbeat failed: %s", exc)
            self._pause(self._backoff(), until)
            return
        self._failures = 0
        self.interval = float(reply.get("heartbeatIntervalSeconds") or self.interval)
        for ref in reply.get("cancel", []):
            self._stop_attempt((ref["job"], ref["attempt"]), "cancel")
        assignments = reply.get("assignments", [])
        for assignment in assignments:
            self._start(assignment)
        if assignments or reply.get("cancel"):
            return  # at once: tell what it holds now, and long-poll again if a slot is free
        # Beat at least once per interval. A long-poll that held the whole interval needs
        # no pause; one answered early with nothing to do (a controller shutting down)
        # must not turn into a busy loop. A finished job (a freed slot) ends the pause.
        self._pause(max(self.interval - (self.clock() - began), 0.0), until)

    def _backoff(self) -> float:
        """The pause after a failed heartbeat (one more failure in a row)."""
        self._failures += 1
        return self._jitter(self._failures)

    def _pause(self, seconds: float, until: float | None = None) -> None:
        if until is not None:
            seconds = min(seconds, until - self.clock())
        if seconds > 0 and self._wake.wait(seconds):
            self._wake.clear()

    # --- attempts ------------------------------------------------------------------------------

    def _start(self, assignment: Mapping[str, Any]) -> None:
        key: Key = (assignment["job"], assignment["attempt"])
        with self._lock:
            if key in self.executions or key in self.unreported:
                return
        if self._draining.is_set():
            # Not started: the next (draining) heartbeat does not list it, and the
            # controller hands it back (Released) without counting a retry.
            log.info("[Worker] draining: not starting %s attempt %d", key[0], key[1])
            return
        deadline = assignment.get("activeDeadlineSeconds")
        try:
            execution = runner.start(key[0], key[1], assignment["command"], deadline, self.clock,
                                     env=self._job_env(key), guard=self.guard, follow=False)
        except (OSError, ValueError) as exc:
            log.warning("[Worker] cannot start %s attempt %d: %s", key[0], key[1], exc)
            with self._lock:
                self.unreported.add(key)
            self._send(_Report(key[0], key[1], "failed", exit_code=127,
                               message=f"cannot start {assignment['command'][:1]}: {exc}"))
            return
        with self._lock:
            self.executions[key] = execution
        self.stats["started"] += 1
        log.info("[Worker] started %s attempt %d (pid %d)", key[0], key[1], execution.pid)
        self._send(_Report(key[0], key[1], "running", final=False))
        self.reaper.add(execution)  # after `running` is queued: its end is reported after it

    def _job_env(self, key: Key) -> dict[str, str]:
        """The worker's environment without its token, plus which attempt this is."""
        return {**self._base_env, "FFRTMP_JOB": key[0], "FFRTMP_ATTEMPT": str(key[1]),
                "FFRTMP_NODE": self.settings.name}

    def _overdue(self, execution: runner.Execution) -> None:
        """The reaper's call: the attempt passed its `activeDeadlineSeconds`."""
        log.info("[Worker] %s attempt %d exceeded its deadline", execution.job, execution.attempt)
        self._kill(execution, "deadline")

    def _ended(self, execution: runner.Execution) -> None:
        """The reaper's call: the attempt's process has exited; queue its final report."""
        key: Key = (execution.job, execution.attempt)
        outcome = execution.outcome()
        with self._lock:
            self.executions.pop(key, None)
            if execution.killed_for != "cancel":
                self.unreported.add(key)
        # A fenced attempt (cancel) is no longer ours: nothing more to say about it.
        if execution.killed_for == "drain":
            self._send(_Report(key[0], key[1], "released", message="handed back by a draining worker",
                               log_tail=execution.tail.text()))
        elif execution.killed_for != "cancel":
            self._send(_Report(key[0], key[1], outcome.state, outcome.exit_code, outcome.message,
                               execution.tail.text(), outcome.reason))
        self._wake.set()

    def _stop_attempt(self, key: Key, why: str) -> None:
        with self._lock:
            execution = self.executions.get(key)
            self.unreported.discard(key)
        if execution is not None and execution.poll() is None:
            log.info("[Worker] stopping %s attempt %d (%s)", key[0], key[1], why)
            self.stats["fenced"] += 1
            self._kill(execution, why)

    def _kill(self, execution: runner.Execution, why: str) -> threading.Thread:
        """Stop an attempt's process group in the background (the grace must not stall heartbeats)."""
        if execution.killed_for is None:
            execution.killed_for = why  # before any signal: the watcher reads it on exit
        killer = threading.Thread(target=execution.kill, args=(why, self.settings.kill_grace_seconds),
                                  name=f"kill-{execution.job}", daemon=True)
        killer.start()
        return killer

    # --- reports -------------------------------------------------------------------------------

    def _send(self, report: _Report) -> None:
        """Queue a report for the reporter thread (started with the first one)."""
        with self._lock:
            self._outbox.append(report)
            if self._reporter is None:
                self._reporter = threading.Thread(target=self._report_loop, name="reporter", daemon=True)
                self._reporter.start()
        self._queued.set()

    def _take_reports(self) -> list[_Report]:
        """The queued reports (at most `REPORTS_PER_REQUEST`), a `running` folded into its end.

        A job that ended before its `running` report went out (a short job, a busy
        machine): `completed` says it ran too (the controller records both steps). A
        failure keeps both, so that the attempt shows it started (a failed start is
        reported without `running`).
        """
        with self._lock:
            batch = self._outbox[:REPORTS_PER_REQUEST]
            del self._outbox[:REPORTS_PER_REQUEST]
            if not self._outbox:
                self._queued.clear()
        completed = {(r.job, r.attempt) for r in batch if r.state == "completed"}
        return [r for r in batch if r.final or (r.job, r.attempt) not in completed]

    def _report_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._queued.wait(0.5):
                continue
            batch = self._take_reports()
            if batch:
                self._deliver(batch)

    def _deliver(self, batch: list[_Report]) -> None:
        """Send reports until the controller answers them; then act on each outcome.

        A report the controller failed on (`InternalError`, where the single route
        answers 500) goes back to the head of the queue after a pause, as a failed
        request would, without holding back the others of its batch.
        """
        failures = 0
        while True:
            try:
                outcomes = self._exchange(batch)
                break
            except ApiError as exc:
                if exc.status and exc.status != 429 and exc.status < 500:
                    for r in batch:
                        log.error("[Worker] report of %s attempt %d refused: %s", r.job, r.attempt, exc)
                    outcomes = [exc.code] * len(batch)
                    break
                failures += 1
                if self._stopping.wait(self._jitter(failures)):
                    return
        again: list[_Report] = []
        freed = False
        for report, error in zip(batch, outcomes, strict=True):
            key: Key = (report.job, report.attempt)
            if error == "InternalError":
                again.append(report)
                continue
            if error == "StaleAttempt":
                # Fenced: the attempt is no longer ours. Stop it if it still runs.
                log.info("[Worker] %s attempt %d is stale", report.job, report.attempt)
                self._stop_attempt(key, "cancel")
            if report.final:
                with self._lock:
                    self.unreported.discard(key)
                self.stats[report.state if error is None else "fenced"] += 1
                freed = True
        if freed:
            self._wake.set()  # the slots are free on the controller's side too: beat for more
        if again:
            self._failures_of_reports += 1
            if self._stopping.wait(self._jitter(self._failures_of_reports)):
                return
            with self._lock:
                self._outbox[:0] = again
            self._queued.set()
        else:
            self._failures_of_reports = 0

    def _jitter(self, failures: int) -> float:
        """A jittered exponential pause capped at the heartbeat interval."""
        ceiling = min(self.interval, 0.1 * (2 ** min(failures, 10)))
        return random.uniform(ceiling / 2, ceiling)

    def _exchange(self, batch: list[_Report]) -> list[str | None]:
        """Send the batch; per report, None when accepted, else the error code it got."""
        if self._batches:
            items = [attempt_report(r.job, r.attempt, r.state, r.exit_code,  # type: ignore[arg-type]
                                    r.message, r.log_tail, None, r.reason) for r in batch]
            try:
                reply = self.client.reports(self.settings.name, items)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                log.info("[Worker] the controller has no batch report route: reporting one by one")
                self._batches = False
            else:
                out: list[str | None] = []
                for report, result in zip(batch, reply["results"], strict=True):
                    error = result.get("error")
                    if error is not None and error["code"] != "StaleAttempt":
                        log.error("[Worker] report of %s attempt %d refused: %s",
                                  report.job, report.attempt, error["message"])
                    out.append(None if error is None else error["code"])
                return out
        return [self._single(report) for report in batch]

    def _single(self, report: _Report) -> str | None:
        """One report on the attempt's own route (a controller without the batch route)."""
        try:
            self.client.report(report.job, report.attempt, report.state,  # type: ignore[arg-type]
                               exit_code=report.exit_code, message=report.message,
                               log_tail=report.log_tail, reason=report.reason)
        except ApiError as exc:
            if exc.status == 409:
                return "StaleAttempt"
            if exc.status and exc.status != 429 and exc.status < 500:
                log.error("[Worker] report of %s attempt %d refused: %s", report.job, report.attempt, exc)
                return exc.code
            raise  # the whole batch again: the reports already applied are idempotent
        return None

    # --- draining ------------------------------------------------------------------------------

    def _finish_drain(self) -> None:
        """Let running jobs finish within the grace, hand back the rest, say goodbye.

        Heartbeats go on during the grace (a grace longer than the controller's node
        timeout must not get the node declared dead and its jobs run twice). The last
        beat, holding nothing, tells the controller this node left, so that no work is
        bound to it until it comes back; it is sent only once every report is
        acknowledged, or the controller would take unreported attempts for lost.
        """
        deadline = self.clock() + self.settings.drain_grace_seconds
        while self.free_slots() < self.settings.slots and self.clock() < deadline:
            if self._hurry.is_set():
                break
            self._beat_once(until=deadline)
        with self._lock:
            leftovers = list(self.executions.values())
        for execution in leftovers:
            log.info("[Worker] handing back %s attempt %d", execution.job, execution.attempt)
            self._kill(execution, "drain")
        # The watchers queue the hand-backs; then the reports go out.
        end = self.clock() + self.settings.kill_grace_seconds + 5
        while self.free_slots() < self.settings.slots and self.clock() < end:
            time.sleep(0.02)
        flush_end = self.clock() + max(self.interval, 5.0)
        while self.held() and self.clock() < flush_end:
            time.sleep(0.02)
        if self.held():
            log.warning("[Worker] %s: reports not acknowledged, leaving without saying goodbye: %s",
                        self.settings.name, self.held())
        else:
            try:
                self.client.heartbeat(self.settings.name, self.settings.slots, self.labels, [],
                                      draining=True)
            except ApiError as exc:
                log.warning("[Worker] goodbye heartbeat failed: %s", exc)
        self._stopping.set()
        log.info("[Worker] %s drained (%s)", self.settings.name, self.stats)
