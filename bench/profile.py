"""Where a controller process spends its time: py-spy samples summarized as text.

    python -m bench.profile STACKS.raw [--top 25]

`py-spy record -p PID -f raw -o STACKS.raw` writes collapsed stacks ("frame;frame;... count",
root first). The summary counts, for each function, the share of samples in which it
is on the stack (inclusive) and at the top (self), over the threads that were busy
(idle threads waiting on a lock, a selector or a condition are left out). Used by
`python -m bench --profile` to record the profiles of missed targets.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

IDLE = ("Condition.wait", "Event.wait", "EpollSelector.select", "InotifyFD._check_inotify_fd", "Queue.get",
        "select", "sleep", "Thread._wait_for_tstate_lock", "Lock.acquire")
_FRAME = re.compile(r"^(?P<func>\S+) \((?P<file>[^:]+)(?::\d+)?\)$")


def _frames(line: str) -> tuple[list[str], int]:
    """A stack's frames, root first, and its sample count (0: a malformed line)."""
    stack, _, count = line.rpartition(" ")
    if not count.isdigit():  # py-spy wrote part of a line (seen in a full run): not counted
        return [], 0
    frames = []
    for raw in stack.split(";"):
        found = _FRAME.match(raw.strip())
        if found:
            path = found.group("file")
            short = "/".join(Path(path).parts[-2:])
            frames.append(f"{found.group('func')} ({short})")
        elif raw.strip() and not raw.startswith(("process ", "thread ")):
            frames.append(raw.strip())
    return frames, int(count)


def summarize(raw: str, top: int = 25) -> dict[str, object]:
    """Inclusive and self shares of the busy samples, per function."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = 0
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        if not count:
            continue
        total += count
        if not frames or frames[-1].split(" (")[0] in IDLE:
            continue
        busy += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(busy, 1), 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "busy_samples": busy, "inclusive_pct": share(inclusive), "self_pct": share(own)}


def as_text(summary: dict[str, object], top: int = 25) -> str:
    """The summary as two short tables."""
    lines = [f"{summary['busy_samples']} busy samples of {summary['samples']}", "", "inclusive %  function"]
    lines += [f"{pct:10.1f}  {name}" for name, pct in summary["inclusive_pct"][:top]]  # type: ignore[index]
    lines += ["", "self %      function"]
    lines += [f"{pct:10.1f}  {name}" for name, pct in summary["self_pct"][:top]]  # type: ignore[index]
    return "\n".join(lines)


@contextlib.contextmanager
def recording(pid: int, out: Path, seconds: float, rate: int = 100, gil: bool = True) -> Iterator[None]:
    """py-spy samples `pid` while the block runs: the thread holding the GIL (`gil`), else every busy thread."""
    spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate),
                            "-f", "raw", "-o", str(out), "--nonblocking", "--threads", *(["--gil"] if gil else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            spy.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()


def main(argv: list[str] | None = None) -> None:
    """Print the summary of a collapsed-stacks file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stacks", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(as_text(summarize(args.stacks.read_text(), args.top), args.top))


if __name__ == "__main__":
    main(sys.argv[1:])
