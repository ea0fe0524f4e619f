"""Running assignments: one process group per attempt, argv only (never a shell).

Each attempt runs in a new session (`start_new_session=True`), so it leads its own
process group and everything it spawns (ffmpeg's helpers, a shell script's
children) is killed with it. Output (stdout and stderr, merged) is drained by a
thread into a bounded tail, so a chatty process never blocks on a full pipe and
never grows the worker's memory.

On Linux each attempt's leader also gets a parent-death signal (SIGKILL when the
worker dies), so a worker killed with `kill -9` leaves no orphan behind: the
controller requeues the attempt, and it must not keep running unsupervised. It is
set by util-linux's `setpriv --pdeathsig KILL` when installed (cheap: Popen keeps
using vfork), else by a pre-exec hook. Through setpriv, a worker that dies in the
instant between starting setpriv and setpriv's prctl leaves that one attempt running
(the hook checks for it; setpriv cannot).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()
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


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Any:
    """libc's prctl on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_worker() -> Callable[[], None] | None:
    """A pre-exec hook making the child get SIGKILL when its parent dies (Linux), or None."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(137)

    return hook


@functools.cache
def _setpriv() -> str | None:
    """util-linux's `setpriv`, when it can set the parent-death signal (Linux), else None.

    Starting the attempt through `setpriv --pdeathsig KILL` gives it the same signal as
    the pre-exec hook, without one: a pre-exec hook forces `fork` and runs Python in the
    child (6 ms of CPU per start here), where Popen otherwise uses `vfork` (1.5 ms, and
    2.7 ms with setpriv's own exec).
    """
    if not sys.platform.startswith("linux"):
        return None
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        usage = subprocess.run([path, "--help"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if b"--pdeathsig" in usage.stdout else None


def _launcher(command: list[str], env: dict[str, str] | None, cwd: str | None) -> tuple[list[str], Any]:
    """The argv and pre-exec hook that make the attempt die with the worker."""
    setpriv = _setpriv()
    if setpriv is None:
        return command, _die_with_worker()
    program = command[0]
    if os.sep not in program or os.path.isabs(program) or cwd is None:
        # What Popen would raise for a program that is not there, before anything starts
        # (through setpriv it would be setpriv's own exit status 127 instead).
        search = (env if env is not None else os.environ).get("PATH", os.defpath)
        if shutil.which(program, path=search) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return [setpriv, "--pdeathsig", "KILL", "--", *command], None


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
    die_with_worker: bool = True,
) -> Execution:
    """Start one attempt in its own process group; OSError if the program can't start.

    With `die_with_worker` (Linux), the attempt is killed when the thread that started
    it ends: call it from a thread that lives as long as the worker (the agent's loop).
    """
    if not command:
        raise ValueError("empty command")
    argv, hook = _launcher(list(command), env, cwd) if die_with_worker else (list(command), None)
    process = subprocess.Popen(  # argv list, no shell: parameters are never interpreted
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=cwd,
        # setpriv, or else the hook (it only calls prctl, async-signal-safe in practice), is
        # what keeps a `kill -9` of the worker from leaving attempts nobody supervises.
        preexec_fn=hook,  # noqa: PLW1509
    )
    now = clock()
    execution = Execution(
        job=job, attempt=attempt, command=list(command), process=process, started=now,
        deadline=None if deadline_seconds is None else now + deadline_seconds,
    )
    reader = threading.Thread(target=_drain, args=(execution,), name=f"tail-{job}-{attempt}", daemon=True)
    execution._reader = reader
    reader.start()
    return execution
