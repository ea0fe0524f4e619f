"""Running assignments: one process group per attempt, argv only (never a shell).

Each attempt runs in a new session (`start_new_session=True`), so it leads its own
process group and everything it spawns (ffmpeg's helpers, a shell script's
children) is killed with it. Output (stdout and stderr, merged) is drained by a
thread into a bounded tail, so a chatty process never blocks on a full pipe and
never grows the worker's memory.

Each attempt's group is also listed with the worker's `Guard`, a small process
that kills the groups still listed when the worker ends, `kill -9` included: the
controller requeues those attempts, and they must not keep running unsupervised.
The attempt itself starts as it is (Popen keeps using vfork; no pre-exec hook, no
launcher program in between).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("controller.worker")

TAIL_BYTES = 16 * 1024
"""Bytes of output kept per attempt (the end of it), sent with the final report."""

KILL_GRACE_SECONDS = 5.0
"""Between SIGTERM to the process group and SIGKILL."""


@dataclass
class Outcome:
    """How an attempt ended, as the worker reports it."""

    state: str  # "completed" | "failed"
    exit_code: int | None
    reason: str | None = None  # "DeadlineExceeded", "InvalidParameters" or None (exit code)
    message: str | None = None


class OutputTail:
    """The last `limit` bytes written to a pipe."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._lock = threading.Lock()

    def feed(self, chunk: bytes) -> None:
        """Append output, dropping the oldest beyond the limit."""
        with self._lock:
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size - len(self._chunks[0]) >= self.limit:
                self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        """The tail as text (undecodable bytes replaced)."""
        with self._lock:
            data = b"".join(self._chunks)
        return data[-self.limit:].decode("utf-8", errors="replace")


@dataclass
class Execution:
    """One running attempt."""

    job: str
    attempt: int
    command: list[str]
    process: subprocess.Popen[bytes]
    started: float
    deadline: float | None
    tail: OutputTail = field(default_factory=OutputTail)
    killed_for: str | None = None
    """Why we killed it: "cancel", "deadline" or "drain"; None while it runs on its own."""
    _reader: threading.Thread | None = None
    _guard: Guard | None = None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the attempt's leader to exit (TimeoutExpired after `timeout`); its exit code.

        Once it is reaped, its group is taken off the guard's list.
        """
        code = self.process.wait(timeout)
        if self._guard is not None:
            self._guard.untrack(self.process.pid)
        return code

    @property
    def pid(self) -> int:
        """The process (and process group) id."""
        return self.process.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.process.poll()

    def kill(self, why: str, grace: float = KILL_GRACE_SECONDS) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after `grace` seconds."""
        if self.killed_for is None:
            self.killed_for = why
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.wait()
        # Children that ignored SIGTERM but outlived the leader.
        _signal_group(self.process.pid, signal.SIGKILL)

    def outcome(self) -> Outcome:
        """How it ended (call once `poll()` is not None)."""
        if self._reader is not None:
            self._reader.join(timeout=2)
        code = self.process.returncode
        if self.killed_for == "deadline":
            return Outcome("failed", code, "DeadlineExceeded", "activeDeadlineSeconds exceeded")
        if code == 0:
            return Outcome("completed", 0)
        if code is not None and code < 0:
            return Outcome("failed", 128 - code, None, f"killed by signal {-code}")
        return Outcome("failed", code, None, f"exit code {code}")


_GUARD = str(Path(__file__).with_name("guard.py"))


class Guard:
    """The client of this worker's guard process (see `controller.worker.guard`).

    `track` lists an attempt's process group with the guard, `untrack` takes it off
    once the worker has reaped the attempt; when the worker ends, however it ends, the
    guard kills the groups still listed. A guard that died is started again on the next
    call and told every group listed so far.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        """The guard's environment (None: this process's)."""
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The guard process's pid, None before it starts."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the guard now (else the first `track` does)."""
        with self._lock:
            if self._process is None:
                self._spawn()

    def track(self, pgid: int) -> None:
        """List a process group: the guard kills it if this worker ends first."""
        with self._lock:
            self._groups.add(pgid)
            self._send(b"+%d\n" % pgid)

    def untrack(self, pgid: int) -> None:
        """Take a reaped attempt's group off the list (never raises: it runs where the
        attempt's end is being reported)."""
        with self._lock:
            if pgid in self._groups:
                self._groups.discard(pgid)
                try:
                    self._send(b"-%d\n" % pgid)
                except OSError as exc:  # no guard could be started again; logged, not fatal here
                    log.error("[Worker] cannot start a guard of attempts: %s", exc)

    def close(self) -> None:
        """End the guard (it kills what is still listed) and wait for it."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            process.stdin.close()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _spawn(self) -> None:
        # Isolated (-I) and without site (-S): it needs the standard library only.
        self._process = subprocess.Popen([sys.executable, "-I", "-S", _GUARD], stdin=subprocess.PIPE,
                                         start_new_session=True, env=self._env)
        if self._groups:
            self._write(b"".join(b"+%d\n" % g for g in sorted(self._groups)))

    def _send(self, line: bytes) -> None:
        if self._process is None:
            self._spawn()
            if line.startswith(b"+"):
                return  # the new guard was told every listed group, this one included
        try:
            self._write(line)
        except OSError:
            log.warning("[Worker] the guard of attempts (pid %s) is gone: starting another", self.pid)
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(1)
            self._spawn()

    def _write(self, data: bytes) -> None:
        assert self._process is not None and self._process.stdin is not None
        os.write(self._process.stdin.fileno(), data)  # one write: lines never interleave


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _drain(execution: Execution) -> None:
    stream = execution.process.stdout
    assert stream is not None
    fd = stream.fileno()
    for chunk in iter(lambda: os.read(fd, 65536), b""):
        execution.tail.feed(chunk)
    stream.close()


def start(
    job: str,
    attempt: int,
    command: Sequence[str],
    deadline_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    guard: Guard | None = None,
) -> Execution:
    """Start one attempt in its own process group; OSError if the program can't start.

    With a `guard`, the group is listed with it until `Execution.wait` reaps the attempt.
    """
    if not command:
        raise ValueError("empty command")
    process = subprocess.Popen(  # argv list, no shell: parameters are never interpreted
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=cwd,
    )
    if guard is not None:
        try:
            guard.track(process.pid)
        except OSError:  # no guard could be started: the attempt must not run unguarded
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            raise
    now = clock()
    execution = Execution(
        job=job, attempt=attempt, command=list(command), process=process, started=now,
        deadline=None if deadline_seconds is None else now + deadline_seconds, _guard=guard,
    )
    reader = threading.Thread(target=_drain, args=(execution,), name=f"tail-{job}-{attempt}", daemon=True)
    execution._reader = reader
    reader.start()
    return execution
