"""The guard: a small process that kills a worker's attempts when the worker is gone.

Each worker starts one guard (this file, run by the worker's own interpreter with
`-I -S`) and tells it, on a pipe, the process group of every attempt it starts
(`+PGID`) and of every attempt it has reaped (`-PGID`). The worker holds the only
write end of that pipe, so the guard reads end-of-file the moment the worker ends,
however it ends (`kill -9`, a crash, a normal exit), and then sends SIGKILL to every
group still listed: the controller reruns those attempts elsewhere, and they must not
run on unsupervised meanwhile.

A group is known only once its process exists, so an attempt is announced before it
starts: `?TAG` (its environment will carry `FFRTMP_GUARD_TAG=TAG`), then `+PGID TAG`
once started, or `!TAG` if it could not start. A worker that dies between the two
leaves the tag pending; the guard then looks for the processes whose environment
carries it (`/proc/PID/environ`) for up to `START_WAIT_SECONDS`, since the program
may still be on its way into `exec`, and kills their groups.

The guard runs in a session of its own and ignores SIGINT, SIGTERM and SIGHUP: a
Ctrl-C, a `kill` of the worker's process group or a stop that signals every process
of a service reaches the worker, which drains, and the guard outlives it to clean up
what the drain left. Only end-of-file (or SIGKILL) ends it.

This module imports nothing of the project: the guard starts in a few milliseconds and
holds a few MiB.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable

TAG_VARIABLE = b"FFRTMP_GUARD_TAG"
START_WAIT_SECONDS = 2.0
"""How long a pending tag is looked for: an attempt's `exec` on a loaded machine."""


def read_list(lines: Iterable[bytes]) -> tuple[set[int], set[bytes]]:
    """The process groups still listed, and the tags still pending, once `lines` are read.

    Lines: `+PGID` or `+PGID TAG` (started: listed, its tag settled), `-PGID` (reaped),
    `?TAG` (about to start), `!TAG` (could not start). A malformed line is skipped: the
    worker writes only these forms.
    """
    groups: set[int] = set()
    pending: set[bytes] = set()
    for line in lines:
        sign, rest = line[:1], line[1:].split()
        if sign in (b"?", b"!"):
            if len(rest) == 1:
                (pending.add if sign == b"?" else pending.discard)(rest[0])
            continue
        if not rest or len(rest) > 2 or not rest[0].isdigit() or int(rest[0]) <= 1:
            continue
        if sign == b"+":
            groups.add(int(rest[0]))
            if len(rest) == 2:
                pending.discard(rest[1])
        elif sign == b"-" and len(rest) == 1:
            groups.discard(int(rest[0]))
    return groups, pending


def tagged(tags: set[bytes], proc: str = "/proc") -> dict[int, bytes]:
    """The processes whose environment carries one of `tags`: pid -> tag.

    Only a process that has run `exec` shows its own environment; one still between
    `fork` and `exec` shows its parent's, and is found by a later look.
    """
    wanted = {TAG_VARIABLE + b"=" + tag: tag for tag in tags}
    found: dict[int, bytes] = {}
    try:
        entries = os.listdir(proc)
    except OSError:  # no /proc (not Linux): the listed groups are all the guard can kill
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        for variable in variables:
            tag = wanted.get(variable)
            if tag is not None:
                found[int(entry)] = tag
                break
    return found


def kill_pending(tags: set[bytes], wait: float = START_WAIT_SECONDS) -> set[bytes]:
    """Kill the groups of the processes carrying `tags`, looking for `wait` seconds at most.

    Answers the tags never found (their attempt never started, or left no process).
    """
    deadline = time.monotonic() + wait
    left = set(tags)
    while left:
        for pid, tag in tagged(left).items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                pgid = os.getpgid(pid)
                if pgid > 1:
                    os.killpg(pgid, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
            left.discard(tag)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return left


def main() -> None:
    """Read the worker's pipe (stdin) to its end, then kill what is still listed."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    groups, pending = read_list(sys.stdin.buffer)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if pending:
        kill_pending(pending)


if __name__ == "__main__":
    main()
