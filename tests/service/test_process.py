"""A real `ffrtmp controller` process on loopback: worker protocol, long-poll, fencing, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
import pytest

from controller.auth.manager import AuthManager
from controller.client import ApiError, Client
from controller.config import AuthConfig, DatabaseConfig
from controller.store.engine import Store

pytestmark = pytest.mark.e2e

LISTENING = re.compile(r"Listening on (https?)://([^\s\"]+):(\d+)")
SCENARIO = """\
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: test1}
spec:
  command: [echo, "{word}"]
  defaults: {word: hello}
"""
START_TIMEOUT = 30.0


def ffrtmp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", *args], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


@dataclass
class Controller:
    process: subprocess.Popen[str]
    url: str
    admin: str
    worker: str
    lines: list[str] = field(default_factory=list)

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.admin, timeout=20)


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
def controller(tmp_path: Path) -> Iterator[Controller]:
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    env = {**os.environ, "FFRTMP_FAULT_TOLERANCE__CHECK_INTERVAL_SECONDS": "0.2",
           "FFRTMP_NODES__HEARTBEAT_INTERVAL_SECONDS": "5", "FFRTMP_AUTH__RATE_LIMIT_PER_MINUTE": "100000"}
    created = ffrtmp("token", "create", "--client", "e2e", "--role", "admin", "--db", url, env=env)
    assert created.returncode == 0, created.stderr
    admin = created.stdout.strip()
    assert re.fullmatch(r"ffr_[A-Za-z0-9_-]{43}", admin), created.stdout
    # The CLI made the schema; the worker's token is issued in-process (saves a start-up).
    store = Store.from_config(DatabaseConfig(url=url))
    worker = AuthManager(store, AuthConfig()).issue_token("w1", "worker", "w1").token
    store.dispose()
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "controller", "--db", url, "--port", "0", "--log-format", "json",
         "--manifests", str(tmp_path / "manifests")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_read, args=(process, lines, found, ready), daemon=True).start()
    ready.wait(START_TIMEOUT)
    assert found, "".join(lines)
    running = Controller(process, found[0], admin, worker, lines)
    yield running
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_heartbeat_assignment_fenced_and_idempotent_reports(controller: Controller) -> None:
    admin = controller.client()
    assert admin.readyz()["status"] == "ready"
    admin.apply(SCENARIO)
    admin.submit_job("test1", "high", {"word": "e2e"}, name="j1")
    worker = controller.client(controller.worker)
    reply = worker.heartbeat("w1", slots=1, running=[])
    assert reply["assignments"] == [{"job": "j1", "attempt": 1, "command": ["echo", "e2e"],
                                     "activeDeadlineSeconds": None}]
    assert worker.report("j1", 1, "running")["applied"] is True
    assert worker.report("j1", 1, "running")["applied"] is False
    with pytest.raises(ApiError) as stale:
        worker.report("j1", 2, "completed", exit_code=0)
    assert stale.value.status == 409 and stale.value.code == "StaleAttempt"
    done = worker.report("j1", 1, "completed", exit_code=0, log_tail="e2e\n")
    assert done == {"job": "j1", "attempt": 1, "status": "completed", "applied": True}
    assert worker.report("j1", 1, "completed", exit_code=0)["applied"] is False
    assert admin.get_job("j1")["status"] == "completed"
    assert [e["details"]["attempt"] for e in admin.audit(event_type="job.stale_report")["items"]] == [2]
    with pytest.raises(ApiError) as other:
        worker.heartbeat("w2", running=[])
    assert other.value.status == 403
    assert "ffrtmp_master_submit_to_start_seconds_count 1.0" in admin.metrics()


def test_long_polls_wait_on_the_event_loop_and_deliver_a_submitted_job(controller: Controller) -> None:
    controller.client().apply(SCENARIO)
    idle = 200
    wait = 5.0

    async def scenario() -> tuple[float, float, dict[str, object]]:
        headers = {"Authorization": f"Bearer {controller.admin}"}
        limits = httpx.Limits(max_connections=idle + 20, max_keepalive_connections=idle + 20)
        async with httpx.AsyncClient(base_url=controller.url, headers=headers, timeout=wait + 10,
                                     limits=limits) as client:
            polls = [asyncio.create_task(client.post(f"/nodes/n{i}/heartbeat?waitSeconds={wait}",
                                                     json={"slots": 1, "running": []}))
                     for i in range(idle)]
            while len((await client.get("/nodes?limit=1000")).json()["items"]) < idle:
                await asyncio.sleep(0.01)
            began = time.monotonic()
            assert (await client.get("/healthz")).status_code == 200  # not starved by the waiters
            healthz = time.monotonic() - began
            submitted = time.monotonic()
            assert (await client.post("/jobs", json={"scenario": "test1", "name": "j1"})).status_code == 201
            done, pending = await asyncio.wait(polls, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            delivered = time.monotonic() - submitted
            assert done, "no long-poll answered before its timeout"
            reply = done.pop().result().json()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            return healthz, delivered, reply

    healthz, delivered, reply = asyncio.run(scenario())
    assert [a["job"] for a in reply["assignments"]] == ["j1"]  # type: ignore[index]
    assert delivered < wait and healthz < wait


def test_sigterm_stops_cleanly(controller: Controller) -> None:
    admin = controller.client()
    admin.apply(SCENARIO)
    admin.submit_job("test1", name="j1")
    def long_poll() -> None:
        # Sent as the stop begins: answered at once, or refused by a server already closing.
        with contextlib.suppress(ApiError):
            controller.client(controller.worker).heartbeat("w1", slots=2, running=[("j1", 1)], wait_seconds=5)

    poll = threading.Thread(target=long_poll)
    controller.process.send_signal(signal.SIGTERM)
    poll.start()
    assert controller.process.wait(15) == 0
    poll.join(15)
    messages = [json.loads(line)["message"] for line in controller.lines if line.startswith("{")]
    assert any(m.startswith("[Controller] Shutting down") for m in messages)
    assert any(re.match(r"\[Controller\] Stopped after \d+ reconcile passes", m) for m in messages), messages
    with pytest.raises(ApiError) as gone:
        Client(controller.url, controller.admin, timeout=2).healthz()
    assert gone.value.status == 0
