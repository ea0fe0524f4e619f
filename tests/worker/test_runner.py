"""The process runner: real processes, process groups, deadlines, bounded output."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from controller.worker import runner

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
