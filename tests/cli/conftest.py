"""A real controller process for the CLI tests (auth on, SQLite, port chosen by the OS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LISTENING = re.compile(r"Listening on (https?://\S+?:\d+)")


@dataclass
class Running:
    url: str
    token: str
    db: str
    workdir: Path

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("FFRTMP_")}
        base.update({"FFRTMP_SERVER": self.url, "FFRTMP_TOKEN": self.token,
                     "FFRTMP_CLIENT_CONFIG": str(self.workdir / "no-client.yaml"), "COLUMNS": "200"})
        base.update(extra)
        return base

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "controller", *args], capture_output=True, text=True,
                              timeout=60, env=self.env(**env), cwd=self.workdir, check=False)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFRTMP_")}
    made = subprocess.run([sys.executable, "-m", "controller", "token", "create", "--client", "cli-test",
                           "--role", "admin", "--db", db], capture_output=True, text=True, env=env, timeout=60,
                          check=True)
    token = made.stdout.strip()
    log = (tmp_path / "controller.log").open("w")
    env.update({"FFRTMP_FAULT_TOLERANCE__CHECK_INTERVAL_SECONDS": "0.2"})
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "controller", "--db", db, "--port", "0",
         "--manifests", str(tmp_path / "watched")],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    deadline = time.monotonic() + 30
    url = ""
    while not url:
        assert process.poll() is None, (tmp_path / "controller.log").read_text()
        assert time.monotonic() < deadline, "controller did not start"
        match = LISTENING.search((tmp_path / "controller.log").read_text())
        if match:
            url = match.group(1)
        else:
            time.sleep(0.05)
    try:
        yield Running(url, token, db, tmp_path)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
