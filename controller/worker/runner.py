"""Running assignments: one process group per attempt, argv only (never a shell).

Each attempt runs in a new session (`start_new_session=True`), so it leads its own
process group and everything it spawns (ffmpeg's helpers, a shell script's
children) is killed with it. Output (stdout and stderr, merged) is drained into a
bounded tail, so a chatty process never blocks on a full pipe and never grows the
worker's memory. The worker follows all its attempts with one `Reaper` thread
(output, exit, deadline); `start` alone gives an attempt a reader thread of its own.

Each attempt's group is also listed with the worker's `Guard`, a small process
that kills the groups still listed when the worker ends, `kill -9` included: the
controller requeues those attempts, and they must not keep running unsupervised.
The attempt itself starts as it is (Popen keeps using vfork; no pre-exec hook, no
launcher program in between).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.worker.guard import TAG_VARIABLE as _TAG_VARIABLE

log = logging.getLogger("controller.worker")

TAG_VARIABLE = _TAG_VARIABLE.decode()
"""Names, in an attempt's environment, its start as announced to the guard."""
TAIL_BYTES = 16 * 1024
"""Bytes of output kept per attempt (the end of it), sent with the final report."""

KILL_GRACE_SECONDS = 5.0
"""Between SIGTERM to the process group and SIGKILL."""

TAIL_WAIT_SECONDS = 2.0
"""After an attempt's leader exits, how long its output may still be read before its end
is reported (a child that inherited the pipe can hold it open for as long as it runs)."""

POLL_SECONDS = 0.05
"""How often the `Reaper` looks for exits where it has no pidfd (not Linux 5.3+)."""


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
        self._reaped()
        return code

    def poll(self) -> int | None:
        """The exit code (the leader reaped, its group off the guard's list), or None while it runs."""
        code = self.process.poll()
        if code is not None:
            self._reaped()
        return code

    def _reaped(self) -> None:
        if self._guard is not None:
            self._guard.untrack(self.process.pid)

    @property
    def pid(self) -> int:
        """The process (and process group) id."""
        return self.process.pid

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

    `announce` tells the guard an attempt is about to start (a tag its environment
    will carry), `track` lists its process group once it has started (or `settle` says
    it did not), `untrack` takes the group off once the worker has reaped the attempt.
    When the worker ends, however it ends, the guard kills the groups still listed, and
    the processes of tags still announced. A guard that died is started again on the
    next call and told every group and tag listed so far.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        """The guard's environment (None: this process's)."""
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._pending: set[str] = set()
        self._starts = itertools.count(1)
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

    def announce(self) -> str:
        """A new tag for an attempt about to start; its environment must carry it
        (`TAG_VARIABLE`), so that the guard finds it if this worker ends before `track`."""
        with self._lock:
            tag = f"{os.getpid()}.{next(self._starts)}"
            self._pending.add(tag)
            try:
                self._send(b"?%s\n" % tag.encode())
            except OSError:  # no guard could be started: nothing starts, nothing to look for
                self._pending.discard(tag)
                raise
        return tag

    def settle(self, tag: str) -> None:
        """The announced attempt did not start: nothing to look for."""
        with self._lock:
            if tag in self._pending:
                self._pending.discard(tag)
                self._send(b"!%s\n" % tag.encode())

    def track(self, pgid: int, tag: str | None = None) -> None:
        """List a process group (started under `tag`, if announced): the guard kills it if
        this worker ends first."""
        with self._lock:
            self._groups.add(pgid)
            if tag is None:
                self._send(b"+%d\n" % pgid)
            else:
                self._pending.discard(tag)
                self._send(b"+%d %s\n" % (pgid, tag.encode()))

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
        told = [b"+%d\n" % g for g in sorted(self._groups)]
        told += [b"?%s\n" % t.encode() for t in sorted(self._pending)]
        if told:
            self._write(b"".join(told))

    def _send(self, line: bytes) -> None:
        if self._process is None:
            self._spawn()
            if line.startswith((b"+", b"?")):
                return  # the new guard was told every listed group and tag, this one included
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
    follow: bool = True,
) -> Execution:
    """Start one attempt in its own process group; OSError if the program can't start.

    With a `guard`, the group is listed with it until the attempt is reaped. With
    `follow`, a thread of its own reads its output; else the caller hands it to a
    `Reaper` (promptly: until then, a chatty attempt blocks on its full pipe).
    """
    if not command:
        raise ValueError("empty command")
    tag = None
    if guard is not None:  # announced first: a worker killed before `track` leaves no orphan
        tag = guard.announce()
        env = {**(os.environ if env is None else env), TAG_VARIABLE: tag}
    try:
        process = subprocess.Popen(  # argv list, no shell: parameters are never interpreted
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    except BaseException:
        if guard is not None and tag is not None:
            with contextlib.suppress(OSError):
                guard.settle(tag)
        raise
    if guard is not None:
        try:
            guard.track(process.pid, tag)
        except OSError:  # no guard could be started: the attempt must not run unguarded
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            raise
    now = clock()
    execution = Execution(
        job=job, attempt=attempt, command=list(command), process=process, started=now,
        deadline=None if deadline_seconds is None else now + deadline_seconds, _guard=guard,
    )
    if not follow:
        return execution
    reader = threading.Thread(target=_drain, args=(execution,), name=f"tail-{job}-{attempt}", daemon=True)
    execution._reader = reader
    reader.start()
    return execution


@dataclass(eq=False)
class _Followed:
    execution: Execution
    pidfd: int | None
    """Readable once the leader has exited; None where there is no pidfd (then polled)."""
    output: int | None
    """The output pipe's descriptor until its end is read."""
    exited_at: float | None = None
    deadline_told: bool = False
    ended: bool = False
    """`on_exit` was called (output may still be read: a child holds the pipe)."""


class Reaper:
    """One thread that follows every attempt of a worker: output, exit and deadline.

    No thread per attempt: the attempts' output pipes and pidfds (readable once the
    process has exited; Linux 5.3+) wait in one selector. Where pidfds are missing,
    running attempts are polled every `POLL_SECONDS`. `on_exit(execution)` is called on
    the reaper's thread once an attempt's leader is reaped and its output read to the
    end, or `TAIL_WAIT_SECONDS` after the exit while a child still holds the pipe (its
    output is read on, into the tail, until the pipe closes). `on_deadline(execution)`
    is called once when a running attempt passes its deadline. Both must return
    promptly (queue, signal, start a thread): the thread serves every attempt.
    """

    def __init__(
        self,
        on_exit: Callable[[Execution], None],
        on_deadline: Callable[[Execution], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_exit = on_exit
        self._on_deadline = on_deadline
        self._clock = clock
        self._lock = threading.Lock()
        self._incoming: list[Execution] = []
        self._followed: set[_Followed] = set()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
            self._thread.start()

    def add(self, execution: Execution) -> None:
        """Follow an attempt started with `start(..., follow=False)`."""
        with self._lock:
            self._incoming.append(execution)
        self._wake()

    def stop(self) -> None:
        """Stop following (attempts still running are left as they are) and free the descriptors."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        for followed in self._followed:
            self._close_pidfd(followed)
            if followed.output is not None:
                self._close_output(followed)
        self._followed.clear()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __len__(self) -> int:
        """Attempts followed (ended ones whose output is still open included)."""
        return len(self._followed)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes it
            os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        while not self._stopping:
            events = self._selector.select(self._timeout())
            for key, _ in events:
                if key.data is None:
                    self._take_incoming()
                elif key.data[0] == "exit":
                    self._exited(key.data[1])
                else:
                    self._read(key.data[1])
            self._check()

    def _take_incoming(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for execution in incoming:
            stream = execution.process.stdout
            output = None if stream is None else stream.fileno()
            followed = _Followed(execution, _pidfd(execution.pid), output)
            self._followed.add(followed)
            if followed.pidfd is not None:
                self._selector.register(followed.pidfd, selectors.EVENT_READ, ("exit", followed))
            if followed.output is not None:
                self._selector.register(followed.output, selectors.EVENT_READ, ("output", followed))

    def _read(self, followed: _Followed) -> None:
        assert followed.output is not None
        try:
            chunk = os.read(followed.output, 65536)
        except OSError:
            chunk = b""
        if chunk:
            followed.execution.tail.feed(chunk)
            return
        self._close_output(followed)
        if followed.ended:
            self._followed.discard(followed)
        elif followed.exited_at is not None:
            self._end(followed)

    def _exited(self, followed: _Followed) -> None:
        if followed.exited_at is not None or followed.execution.poll() is None:
            return
        followed.exited_at = self._clock()
        self._close_pidfd(followed)
        if followed.output is None:
            self._end(followed)

    def _check(self) -> None:
        now = self._clock()
        for followed in list(self._followed):
            execution = followed.execution
            if followed.exited_at is None:
                if followed.pidfd is None:
                    self._exited(followed)
                overdue = execution.deadline is not None and now >= execution.deadline
                if followed.exited_at is None and overdue and not followed.deadline_told:
                    followed.deadline_told = True
                    self._call(self._on_deadline, execution)
            elif not followed.ended and now - followed.exited_at >= TAIL_WAIT_SECONDS:
                self._end(followed)

    def _timeout(self) -> float | None:
        now = self._clock()
        due: list[float] = []
        for followed in self._followed:
            execution = followed.execution
            if followed.exited_at is None:
                if followed.pidfd is None:
                    due.append(now + POLL_SECONDS)
                if execution.deadline is not None and not followed.deadline_told:
                    due.append(execution.deadline)
            elif not followed.ended:
                due.append(followed.exited_at + TAIL_WAIT_SECONDS)
        return max(min(due) - now, 0.0) if due else None

    def _end(self, followed: _Followed) -> None:
        followed.ended = True
        if followed.output is None:
            self._followed.discard(followed)
        self._call(self._on_exit, followed.execution)

    def _call(self, callback: Callable[[Execution], None], execution: Execution) -> None:
        try:
            callback(execution)
        except Exception:  # one attempt's handler must not stop the others being followed
            log.exception("[Worker] handling %s attempt %d failed", execution.job, execution.attempt)

    def _close_pidfd(self, followed: _Followed) -> None:
        if followed.pidfd is not None:
            self._selector.unregister(followed.pidfd)
            os.close(followed.pidfd)
            followed.pidfd = None

    def _close_output(self, followed: _Followed) -> None:
        assert followed.output is not None
        self._selector.unregister(followed.output)
        followed.output = None
        stream = followed.execution.process.stdout
        if stream is not None:
            stream.close()


def _pidfd(pid: int) -> int | None:
    """A pidfd of an unreaped child (readable once it has exited), or None where there is none."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:  # a kernel before 5.3, or a sandbox that refuses it: polled instead
        return None
