"""The process runner: real processes, process groups, deadlines, bounded output."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.worker import guard, runner

PY = sys.executable


def gone(pid: int) -> bool:
    """True when the process no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_completed_with_output_tail() -> None:
    execution = runner.start("j", 1, [PY, "-c", "print('hello'); print('world')"])
    execution.process.wait(10)
    outcome = execution.outcome()
    assert (outcome.state, outcome.exit_code) == ("completed", 0)
    assert execution.tail.text() == "hello\nworld\n"


def test_nonzero_exit_is_a_failure_with_its_code() -> None:
    execution = runner.start("j", 1, [PY, "-c", "import sys; sys.exit(3)"])
    execution.process.wait(10)
    outcome = execution.outcome()
    assert (outcome.state, outcome.exit_code, outcome.reason) == ("failed", 3, None)


def test_arguments_are_never_interpreted_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    execution = runner.start("j", 1, ["echo", f"; touch {marker}", "$(id)"])
    execution.process.wait(10)
    execution.outcome()
    assert execution.tail.text() == f"; touch {marker} $(id)\n"
    assert not marker.exists()


def test_output_tail_is_bounded() -> None:
    code = "import sys\nfor i in range(200000): sys.stdout.write(f'line {i}\\n')"
    execution = runner.start("j", 1, [PY, "-c", code])
    execution.process.wait(30)
    execution.outcome()
    tail = execution.tail.text()
    assert len(tail.encode()) <= runner.TAIL_BYTES
    assert tail.endswith("line 199999\n")


def test_kill_stops_the_whole_process_group() -> None:
    # A parent that starts two children which ignore nothing and would outlive it.
    code = (
        "import subprocess, sys, time\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(2)]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
        "time.sleep(60)\n"
    )
    execution = runner.start("j", 1, [PY, "-c", code])
    for _ in range(500):
        if execution.tail.text().strip():
            break
        time.sleep(0.01)
    kids = [int(p) for p in execution.tail.text().split()]
    assert len(kids) == 2 and all(not gone(p) for p in kids)
    assert os.getpgid(kids[0]) == execution.pid
    execution.kill("cancel", grace=2)
    assert gone(execution.pid)
    for _ in range(100):
        if all(gone(p) for p in kids):
            break
        time.sleep(0.02)
    assert all(gone(p) for p in kids)
    assert execution.killed_for == "cancel"


def test_term_ignoring_process_is_killed_after_the_grace() -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)"
    execution = runner.start("j", 1, [PY, "-c", code])
    while "ready" not in execution.tail.text():
        time.sleep(0.01)
    execution.kill("cancel", grace=0.2)
    assert execution.poll() == -9


def test_deadline_outcome() -> None:
    execution = runner.start("j", 1, [PY, "-c", "import time; time.sleep(60)"], deadline_seconds=0.1)
    assert execution.deadline is not None
    execution.kill("deadline", grace=1)
    outcome = execution.outcome()
    assert (outcome.state, outcome.reason) == ("failed", "DeadlineExceeded")


def test_a_missing_program_raises() -> None:
    with pytest.raises(OSError):
        runner.start("j", 1, ["/nonexistent/program"])


# --- the guard: a worker's attempts die with it --------------------------------------------------

def wait_gone(pids: list[int], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def test_the_guard_reads_plus_and_minus_lines_and_skips_malformed_ones() -> None:
    lines = [b"+100\n", b"+200\n", b"-100\n", b"+300\n", b"garbage\n", b"+-4\n", b"+1\n", b"+\n", b"-999\n"]
    assert guard.read_list(lines)[0] == {200, 300}


def test_the_guard_settles_a_tag_when_its_attempt_starts_or_fails_to() -> None:
    lines = [b"?w.1\n", b"?w.2\n", b"?w.3\n", b"+500 w.1\n", b"!w.2\n", b"+600\n", b"-600\n",
             b"?\n", b"?a b\n", b"+700 w.9 extra\n", b"-500 w.1\n"]
    assert guard.read_list(lines) == ({500}, {b"w.3"})


def test_without_proc_the_guard_finds_no_tagged_process(tmp_path: Path) -> None:
    assert guard.tagged({b"w.1"}, proc=str(tmp_path / "absent")) == {}


def _tagged_sleeper(tag: str, grandchild: bool = False) -> subprocess.Popen[bytes]:
    """An attempt as `runner.start` makes it (own session, the tag in its environment),
    started behind the guard's back: as if the worker died before `track`."""
    code = ("import subprocess, sys, time\n"
            + ("subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n" if grandchild else "")
            + "time.sleep(60)\n")
    return subprocess.Popen([PY, "-c", code], start_new_session=True, env={**os.environ, runner.TAG_VARIABLE: tag})


def _group(pgid: int) -> list[int]:
    """The pids of a process group still running."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid and not gone(int(entry.name)):
                    out.append(int(entry.name))
    return out


def test_an_attempt_announced_but_never_listed_dies_with_the_worker() -> None:
    g = runner.Guard()
    tag = g.announce()
    attempt = _tagged_sleeper(tag, grandchild=True)
    try:
        deadline = time.monotonic() + 10
        while len(_group(attempt.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        members = _group(attempt.pid)
        assert len(members) == 2
        g.close()  # end of file: what the guard reads however the worker ends
        assert wait_gone(members)
    finally:
        attempt.kill()
        attempt.wait()


def test_the_guard_waits_for_an_announced_attempt_still_on_its_way_to_exec() -> None:
    g = runner.Guard()
    tag = g.announce()
    started: list[subprocess.Popen[bytes]] = []
    late = threading.Timer(0.3, lambda: started.append(_tagged_sleeper(tag)))
    late.start()
    try:
        g.close()  # the guard looks for the tag after end of file, for up to START_WAIT_SECONDS
        late.join()
        assert wait_gone([started[0].pid])
    finally:
        late.cancel()
        for process in started:
            process.kill()
            process.wait()


def test_a_settled_or_listed_tag_is_not_looked_for() -> None:
    g = runner.Guard()
    failed, listed = g.announce(), g.announce()
    g.settle(failed)  # could not start
    g.track(os.getpid() + 10_000_000, listed)  # started: its group is what the guard kills
    g.untrack(os.getpid() + 10_000_000)
    bystanders = [_tagged_sleeper(failed), _tagged_sleeper(listed)]
    try:
        g.close()  # had the guard looked for these tags, it would have found and killed both
        assert all(p.poll() is None for p in bystanders)
    finally:
        for process in bystanders:
            process.kill()
            process.wait()


def test_a_new_guard_is_told_the_tags_still_announced() -> None:
    g = runner.Guard()
    tag = g.announce()
    old = g.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    assert wait_gone([old])
    g.settle(g.announce())  # the next call starts another guard
    assert g.pid not in (None, old)
    attempt = _tagged_sleeper(tag)
    try:
        g.close()
        assert wait_gone([attempt.pid])
    finally:
        attempt.kill()
        attempt.wait()


def test_an_attempt_carries_its_tag_and_the_guard_keeps_none_once_it_started() -> None:
    g = runner.Guard()
    try:
        execution = runner.start("j", 1, [PY, "-c", f"import os; print(os.environ[{runner.TAG_VARIABLE!r}])"],
                                 env={"PATH": os.environ["PATH"]}, guard=g)
        execution.wait(10)
        assert execution.outcome().state == "completed"  # the output read to its end
        assert execution.tail.text().strip() == f"{os.getpid()}.1"
        assert g._pending == set()
        with pytest.raises(OSError):
            runner.start("j", 2, ["/nonexistent/program"], guard=g)
        assert g._pending == set()
    finally:
        g.close()


def test_kill_9_of_a_worker_kills_its_attempts_groups_grandchildren_included(tmp_path: Path) -> None:
    # A "worker": a process that starts two attempts through a guard, then waits to be killed.
    attempt = ("import subprocess, sys, time\n"
               "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
               "print(kid.pid, flush=True)\n"
               "time.sleep(60)\n")
    worker_code = (
        "import sys, time\n"
        "from controller.worker import runner\n"
        "guard = runner.Guard()\n"
        f"runs = [runner.start('j', i, [sys.executable, '-c', {attempt!r}], guard=guard) for i in (1, 2)]\n"
        "while not all(r.tail.text().strip() for r in runs):\n"
        "    time.sleep(0.01)\n"
        "print(guard.pid, *(r.pid for r in runs), *(r.tail.text().strip() for r in runs), flush=True)\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen([PY, "-c", worker_code], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        guard_pid, *pids = (int(p) for p in worker.stdout.readline().split())
        assert len(pids) == 4 and not any(gone(p) for p in [guard_pid, *pids])
        assert os.getsid(guard_pid) == guard_pid  # its own session: a group signal to the worker misses it
        worker.kill()
        worker.wait()
        assert wait_gone(pids), [p for p in pids if not gone(p)]
        assert wait_gone([guard_pid])
    finally:
        worker.kill()
        worker.wait()


def test_a_guard_that_died_is_started_again_and_told_every_listed_group() -> None:
    g = runner.Guard()
    first = runner.start("j", 1, [PY, "-c", "import time; time.sleep(60)"], guard=g)
    old = g.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    assert wait_gone([old])
    second = runner.start("j", 2, [PY, "-c", "import time; time.sleep(60)"], guard=g)
    assert g.pid not in (None, old)
    g.close()  # what the worker's end does: both groups are killed, the first one included
    assert wait_gone([first.pid, second.pid])


def test_a_reaped_attempt_is_taken_off_the_guards_list() -> None:
    g = runner.Guard()
    done = runner.start("j", 1, [PY, "-c", "pass"], guard=g)
    assert done.wait(10) == 0
    # A process that happens to lead a group the guard once listed is left alone.
    bystander = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        g.track(bystander.pid)
        g.untrack(bystander.pid)
        g.close()
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_reaping_an_attempt_never_fails_for_want_of_a_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    g = runner.Guard()
    execution = runner.start("j", 1, [PY, "-c", "import time; time.sleep(0.2)"], guard=g)
    assert g.pid is not None
    os.kill(g.pid, signal.SIGKILL)
    assert wait_gone([g.pid])

    def cannot_spawn() -> None:
        raise OSError("no interpreter")

    monkeypatch.setattr(g, "_spawn", cannot_spawn)
    assert execution.wait(10) == 0  # the watcher goes on to report the attempt


# --- the reaper: every attempt followed by one thread ---------------------------------------------

class Followed:
    """A started reaper that records its calls; `deadline` kills the attempt as the worker does."""

    def __init__(self) -> None:
        self.ended: list[runner.Execution] = []
        self.overdue: list[runner.Execution] = []
        self.reaper = runner.Reaper(self.ended.append, self._overdue)
        self.reaper.start()

    def _overdue(self, execution: runner.Execution) -> None:
        self.overdue.append(execution)
        execution.killed_for = "deadline"
        os.killpg(execution.pid, signal.SIGKILL)

    def run(self, command: list[str], deadline: float | None = None) -> runner.Execution:
        execution = runner.start("j", len(self.ended) + 1, command, deadline, follow=False)
        self.reaper.add(execution)
        return execution

    def wait_ended(self, count: int, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while len(self.ended) < count:
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)


@pytest.fixture
def followed() -> Iterator[Followed]:
    f = Followed()
    yield f
    f.reaper.stop()


def test_the_reaper_reads_output_and_sees_exits_without_a_thread_per_attempt(followed: Followed) -> None:
    threads = threading.active_count()
    runs = [followed.run([PY, "-c", f"print('out', {i}); raise SystemExit({i % 2})"]) for i in range(12)]
    assert threading.active_count() == threads
    followed.wait_ended(12)
    assert sorted(followed.ended, key=runs.index) == runs
    for i, execution in enumerate(runs):
        assert execution.tail.text() == f"out {i}\n"
        assert execution.outcome().state == ("completed" if i % 2 == 0 else "failed")
    assert len(followed.reaper) == 0


def test_the_reaper_tells_a_deadline_once_and_then_the_end(followed: Followed) -> None:
    execution = followed.run([PY, "-c", "import time; time.sleep(60)"], deadline=0.2)
    followed.wait_ended(1)
    assert followed.overdue == [execution]
    outcome = execution.outcome()
    assert (outcome.state, outcome.reason) == ("failed", "DeadlineExceeded")


def test_a_child_holding_the_output_open_does_not_hold_the_end(
    followed: Followed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(runner, "TAIL_WAIT_SECONDS", 0.3)
    go = tmp_path / "go"
    kid_code = (f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
                "print('late', flush=True)\n")
    code = ("import subprocess, sys\n"
            f"kid = subprocess.Popen([sys.executable, '-c', {kid_code!r}])\n"
            "print('leader', kid.pid, flush=True)\n")
    execution = followed.run([PY, "-c", code])
    followed.wait_ended(1)  # the leader's end, while its child still holds the output
    assert execution.outcome().state == "completed"
    kid = int(execution.tail.text().split()[1])
    assert not gone(kid) and len(followed.reaper) == 1
    # Its output is still read (the child never blocks on a full pipe), then the pipe is let go.
    go.touch()
    deadline = time.monotonic() + 10
    while len(followed.reaper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "late" in execution.tail.text() and len(followed.reaper) == 0


def test_without_pidfds_the_reaper_polls(followed: Followed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open")
    execution = followed.run([PY, "-c", "print('polled')"])
    followed.wait_ended(1)
    assert execution.tail.text() == "polled\n" and execution.outcome().state == "completed"


def test_a_failing_handler_does_not_stop_the_reaper() -> None:
    ended: list[runner.Execution] = []

    def flaky(execution: runner.Execution) -> None:
        ended.append(execution)
        if len(ended) == 1:
            raise RuntimeError("boom")

    reaper = runner.Reaper(flaky, lambda e: None)
    reaper.start()
    try:
        for i in (1, 2):
            execution = runner.start("j", i, [PY, "-c", "pass"], follow=False)
            reaper.add(execution)
            deadline = time.monotonic() + 10
            while len(ended) < i:
                assert time.monotonic() < deadline, "timed out"
                time.sleep(0.01)
    finally:
        reaper.stop()
