"""A real controller process (and real workers) on loopback, for the benchmarks.

The controller runs as `python -m controller controller` on a fresh SQLite file (or a
PostgreSQL URL) with auth on; the bench process talks to it over HTTP like any client.
Worker tokens are minted in bulk straight into the database before it starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from controller.auth.manager import AuthManager
from controller.config import AuthConfig, DatabaseConfig
from controller.store.engine import Store
from controller.store.migrate import upgrade

LISTENING = re.compile(r"Listening on (https?://\S+?:\d+)")
SETTINGS = {
    "FFRTMP_AUTH__ENABLED": "true",
    "FFRTMP_AUTH__RATE_LIMIT_PER_MINUTE": "100000000",
    "FFRTMP_AUTH__FAILED_AUTH_PER_MINUTE": "100000",
    "FFRTMP_NODES__HEARTBEAT_INTERVAL_SECONDS": "10",
    "FFRTMP_FAULT_TOLERANCE__CHECK_INTERVAL_SECONDS": "1",
}


def mint_tokens(db_url: str, nodes: list[str]) -> tuple[str, dict[str, str]]:
    """An admin token and one worker token per node, written into the database."""
    store = Store.from_config(DatabaseConfig(url=db_url))
    try:
        upgrade(store)
        auth = AuthManager(store, AuthConfig(token_expiry_minutes=24 * 60))
        admin = auth.issue_token("bench-admin", "admin").token
        workers = {n: auth.issue_token(f"bench-{n}", "worker", node=n).token for n in nodes}
    finally:
        store.dispose()
    return admin, workers


@dataclass
class Controller:
    """One `ffrtmp controller` process; `url` once it listens."""

    db_url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    log: Path | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait for its `Listening on` line and `GET /readyz`."""
        self.log = self.workdir / f"controller-{os.getpid()}-{time.monotonic_ns()}.log"
        manifests = self.workdir / "manifests"
        manifests.mkdir(exist_ok=True)
        env = {**os.environ, **SETTINGS, **self.env}
        env.pop("FFRTMP_TOKEN", None)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller", "controller", "--db", self.db_url, "--host", "127.0.0.1",
                 "--port", "0", "--manifests", str(manifests), "--log-level", "info"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the controller exited: {self.log.read_text()[-2000:]}")
            found = LISTENING.search(self.log.read_text(errors="replace"))
            if found:
                self.url = found.group(1)
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError("the controller did not become ready")

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass
class Workers:
    """`ffrtmp worker` processes (the lean entry point), one per node name."""

    url: str
    tokens: dict[str, str]
    slots: int
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        """Start one worker per token."""
        for name, token in self.tokens.items():
            log = (self.workdir / f"worker-{name}.log").open("ab")
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "controller.cli.worker_cmd", "--server", self.url, "--name", name,
                 "--slots", str(self.slots), "--drain-seconds", "1", "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
                env={**os.environ, "FFRTMP_TOKEN": token},  # not in argv, which every user can read
            ))
            log.close()

    def stop(self) -> None:
        """SIGTERM each worker (it drains), SIGKILL its group if it lingers."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


class PeakMemory:
    """Samples a process's resident memory in a thread; `peak_kib` and the kernel's VmHWM."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid = pid
        self.every = every
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from bench.machine import rss_kib
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid)["rss_kib"])
            self._stop.wait(self.every)

    @contextlib.contextmanager
    def watching(self) -> Iterator[PeakMemory]:
        """Sample while the block runs."""
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def percentiles(samples: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p90/p99/max of samples in seconds, as milliseconds (by default)."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 2)

    return {"n": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(ordered[-1] * scale, 2), "mean": round(sum(ordered) / len(ordered) * scale, 2)}
