"""`ffrtmp up --exit-when-done`: the demo of the README's quick start, as real processes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_every_example_job_to_completion(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFRTMP_")}
    result = subprocess.run(
        [sys.executable, "-m", "controller", "up", "--workers", "2", "--exit-when-done", "--port", "0",
         "--manifests", str(ROOT / "manifests"), "--timeout", "120"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.search(r"done: (\d+) completed, (\d+) failed, (\d+) cancelled", result.stderr)
    assert done is not None, result.stderr[-3000:]
    completed = int(done.group(1))
    ffmpeg_jobs = 3
    if shutil.which("ffmpeg"):
        assert completed == 5 + ffmpeg_jobs
        assert "skipped" not in result.stderr
    else:
        assert completed == 5
        assert "skipped (no node here can run them" in result.stderr
    assert (tmp_path / "ffrtmp.db").exists()
    assert (tmp_path / "ffrtmp-logs" / "controller.log").exists()
