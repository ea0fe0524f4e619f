"""The e2e scenarios' program: records each run in a shared log, then sleeps and exits.

    python job.py LOG TAG [--sleep S] [--first-sleep S] [--exit N] [--child true]

Appends `start TAG ATTEMPT PID [CHILD_PID]` when it starts and `done TAG ATTEMPT` when
it ends on its own, one line each (O_APPEND: lines from concurrent runs don't mix).
The attempt comes from the worker (FFRTMP_ATTEMPT). `--child` starts a child that
sleeps, to check that a whole process group is killed. `--first-sleep` (when not
negative) replaces `--sleep` for attempt 1: a first attempt that is still running
when the test interrupts it, and a retry that ends quickly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("tag")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--first-sleep", type=float, default=-1.0)
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--child", default="false")
    args = parser.parse_args()
    attempt = os.environ.get("FFRTMP_ATTEMPT", "?")
    pids = [os.getpid()]
    if args.child == "true":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pids.append(child.pid)
    record(args.log, f"start {args.tag} {attempt} " + " ".join(map(str, pids)))
    print(f"{args.tag} attempt {attempt} running", flush=True)
    time.sleep(args.first_sleep if attempt == "1" and args.first_sleep >= 0 else args.sleep)
    record(args.log, f"done {args.tag} {attempt}")
    return args.exit


if __name__ == "__main__":
    sys.exit(main())
