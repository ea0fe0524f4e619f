"""The guard: a small process that kills a worker's attempts when the worker is gone.

Each worker starts one guard (this file, run by the worker's own interpreter with
`-I -S`) and tells it, on a pipe, the process group of every attempt it starts
(`+PGID`) and of every attempt it has reaped (`-PGID`). The worker holds the only
write end of that pipe, so the guard reads end-of-file the moment the worker ends,
however it ends (`kill -9`, a crash, a normal exit), and then sends SIGKILL to every
group still listed: the controller reruns those attempts elsewhere, and they must not
run on unsupervised meanwhile.

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
from collections.abc import Iterable


def groups_left(lines: Iterable[bytes]) -> set[int]:
    """The process groups still listed once `lines` (`+PGID` / `-PGID`) are read to the end.

    A malformed line is skipped: the worker writes only these two forms.
    """
    groups: set[int] = set()
    for line in lines:
        sign, number = line[:1], line[1:].strip()
        if not number.isdigit() or int(number) <= 1:
            continue
        if sign == b"+":
            groups.add(int(number))
        elif sign == b"-":
            groups.discard(int(number))
    return groups


def main() -> None:
    """Read the worker's pipe (stdin) to its end, then kill what is still listed."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    for pgid in groups_left(sys.stdin.buffer):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
