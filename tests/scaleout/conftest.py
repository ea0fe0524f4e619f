"""Several real `ffrtmp controller` processes on one PostgreSQL database, and simulated workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from controller.client import ApiError, Client

LISTENING = re.compile(r"Listening on (https?)://([^\s\"]+):(\d+)")
START_TIMEOUT = 30.0

# Short leases, so a failover takes about two seconds instead of fifteen.
LEASE = 2.0
RENEW_DEADLINE = 1.5
RETRY_PERIOD = 0.3
FAST_ENV = {
    "FFRTMP_LEADER_ELECTION__LEASE_DURATION_SECONDS": str(LEASE),
    "FFRTMP_LEADER_ELECTION__RENEW_DEADLINE_SECONDS": str(RENEW_DEADLINE),
    "FFRTMP_LEADER_ELECTION__RETRY_PERIOD_SECONDS": str(RETRY_PERIOD),
    "FFRTMP_FAULT_TOLERANCE__CHECK_INTERVAL_SECONDS": "0.2",
    "FFRTMP_FAULT_TOLERANCE__NODE_TIMEOUT_SECONDS": "5",
    "FFRTMP_FAULT_TOLERANCE__RETRY_DELAY_SECONDS": "0",
    "FFRTMP_NODES__HEARTBEAT_INTERVAL_SECONDS": "1",
    "FFRTMP_AUTH__ENABLED": "false",
}

SCENARIO = """\
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: enc}
spec: {command: [echo, "{n}"], defaults: {n: 0}}
"""


def jobs_yaml(count: int, prefix: str = "job") -> str:
    """`count` Job manifests of scenario `enc`."""
    return "".join(
        f"---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {{name: {prefix}-{i:05d}}}\n"
        f"spec: {{scenario: enc, parameters: {{n: {i}}}}}\n"
        for i in range(count)
    )


@dataclass
class ControllerProcess:
    """One controller process, its address and its log lines."""

    name: str
    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def client(self, timeout: float = 10) -> Client:
        return Client(self.url, timeout=timeout)

    def readyz(self) -> dict[str, Any] | None:
        """The readiness answer, or None when the process does not answer."""
        try:
            with self.client(timeout=2) as c:
                return c.readyz()
        except ApiError as exc:
            return exc.body if exc.status == 503 and isinstance(exc.body, dict) else None

    def leads(self) -> bool:
        ready = self.readyz()
        return bool(ready and ready.get("leader"))

    def log(self) -> str:
        return "".join(self.lines)


def _read(process: subprocess.Popen[str], lines: list[str], found: list[str], ready: threading.Event) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)
        match = LISTENING.search(line)
        if match and not found:
            found.append(f"{match.group(1)}://{match.group(2)}:{match.group(3)}")
            ready.set()
    ready.set()


@pytest.fixture
def farm_db(empty_pg_url: str) -> str:
    """A PostgreSQL database with the schema (made once, before several controllers start)."""
    done = subprocess.run([sys.executable, "-m", "controller", "db", "upgrade", "--db", empty_pg_url],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return empty_pg_url


@pytest.fixture
def start_controller(farm_db: str, tmp_path: Path) -> Iterator[Callable[..., ControllerProcess]]:
    """Start controller processes on `farm_db` (loopback, any port); all are stopped at the end."""
    started: list[ControllerProcess] = []

    def start(name: str, **env: str) -> ControllerProcess:
        environ = {**os.environ, **FAST_ENV, "FFRTMP_LEADER_ELECTION__IDENTITY": name, **env}
        process = subprocess.Popen(
            [sys.executable, "-m", "controller", "controller", "--db", farm_db, "--port", "0",
             "--manifests", str(tmp_path / "manifests"), "--log-format", "json"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environ,
        )
        lines: list[str] = []
        found: list[str] = []
        ready = threading.Event()
        threading.Thread(target=_read, args=(process, lines, found, ready), daemon=True).start()
        ready.wait(START_TIMEOUT)
        assert found, "".join(lines)
        controller = ControllerProcess(name, process, found[0], lines)
        started.append(controller)
        return controller

    yield start
    for c in started:
        if c.process.poll() is None:
            os.kill(c.process.pid, signal.SIGCONT)
            c.process.send_signal(signal.SIGTERM)
    for c in started:
        try:
            c.process.wait(15)
        except subprocess.TimeoutExpired:
            c.process.kill()
            c.process.wait()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `predicate` until it is truthy (its value) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def one_leader(controllers: list[ControllerProcess]) -> ControllerProcess | None:
    """The single replica that says it leads, when exactly one does."""
    leading = [c for c in controllers if c.leads()]
    return leading[0] if len(leading) == 1 else None


def audit_rows(url: str, *event_types: str) -> list[Any]:
    """Audit rows of the given types, in id order, straight from the database."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(
                sa.text("SELECT id, event_type, entity_id, details FROM audit_log "
                        "WHERE event_type = ANY(:types) ORDER BY id"), {"types": list(event_types)}))
    finally:
        engine.dispose()


class SimulatedWorker(threading.Thread):
    """A worker driven over HTTP: heartbeats to the replicas in turn, completes what it is given.

    A replica that does not answer is skipped (a load balancer would do the same); a
    report that got no answer is sent again to another replica (reports are idempotent).
    """

    def __init__(self, name: str, slots: int, urls: list[str], stop: threading.Event,
                 hold_seconds: float = 0.0) -> None:
        super().__init__(name=f"worker-{name}", daemon=True)
        self.node = name
        self.slots = slots
        self.clients = [Client(u, timeout=5) for u in urls]
        self.stop_event = stop
        self.hold_seconds = hold_seconds
        self.assigned: list[tuple[str, int]] = []
        self.completed: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self._turn = 0

    def _call(self, fn: Callable[[Client], Any]) -> Any:
        for _ in range(len(self.clients) * 20):
            client = self.clients[self._turn % len(self.clients)]
            self._turn += 1
            try:
                return fn(client)
            except ApiError as exc:
                if exc.status not in (0, 500, 503):
                    raise
                if exc.status != 0:
                    self.errors.append(f"{exc.status} {exc.code}: {exc}")
                time.sleep(0.05)
        raise RuntimeError(f"{self.node}: no replica answered")

    def run(self) -> None:
        held: dict[tuple[str, int], float] = {}
        while not self.stop_event.is_set():
            reply = self._call(lambda c: c.heartbeat(self.node, slots=self.slots, running=list(held)))
            for a in reply["assignments"]:
                key = (a["job"], a["attempt"])
                if key not in held:
                    self.assigned.append(key)
                    held[key] = time.monotonic()
            for key in [k for k, t in held.items() if time.monotonic() - t >= self.hold_seconds]:
                try:
                    self._call(lambda c, k=key: c.report(k[0], k[1], "completed", exit_code=0))  # type: ignore[misc]
                    self.completed.append(key)
                except ApiError as exc:
                    self.errors.append(f"report {key}: {exc.status} {exc.code}")
                del held[key]
            if not reply["assignments"] and not held:
                time.sleep(0.02)

    def close(self) -> None:
        for c in self.clients:
            c.close()
