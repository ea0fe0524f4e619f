"""The controller process in-process: wiring, metrics from passes, and a stop that waits for the pass."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from controller.config import load_config
from controller.service import ControllerService, DesiredStateSource, ServeOptions
from controller.store import views
from controller.store.manifest_files import list_manifest_files


class SlowSource:
    """A desired-state source whose sync can be held, to have a pass in flight."""

    def __init__(self) -> None:
        self.started = self.stopped = False
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.syncs = 0

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def sync(self, now: datetime) -> None:
        self.entered.set()
        self.hold.wait(10)
        self.syncs += 1


def _config(tmp_path: Path) -> Any:
    return load_config(None, env={}, overrides={
        "database": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
        "auth": {"enabled": False},
        "faultTolerance": {"checkIntervalSeconds": 0.05},
        "server": {"port": 0},
        "manifests": {"dir": str(tmp_path / "manifests")},  # not the repository's examples
    })


def test_the_source_satisfies_the_protocol() -> None:
    source: DesiredStateSource = SlowSource()
    assert source is not None


def test_stop_lets_the_pass_in_flight_finish(tmp_path: Path) -> None:
    source = SlowSource()
    service = ControllerService(_config(tmp_path), source)
    passes: list[Any] = []
    on_pass = service.reconciler.on_pass
    service.reconciler.on_pass = lambda r: (passes.append(r), on_pass(r))  # type: ignore[func-returns-value]
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(service.serve(ServeOptions("127.0.0.1", 0))))
    thread.start()
    assert source.entered.wait(10)
    while not passes:  # the first pass is done; hold the next one in flight
        time.sleep(0.01)
    source.hold.clear()
    source.entered.clear()
    service.loop.wake()
    assert source.entered.wait(10)
    in_flight = len(passes)
    service.request_exit()
    thread.join(0.3)
    assert thread.is_alive()  # waiting for the pass
    source.hold.set()
    thread.join(10)
    assert codes == [0]
    assert len(passes) == in_flight + 1  # the held pass ran to its end
    assert source.started and source.stopped and not service.loop.running
    audit = [e for e in _audit(tmp_path) if e == "controller.started"]
    assert audit == ["controller.started"]


def _audit(tmp_path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(tmp_path / "c.db") as db:
        return [r[0] for r in db.execute("SELECT event_type FROM audit_log ORDER BY id")]


def test_metrics_follow_passes_and_starts(tmp_path: Path) -> None:
    service = ControllerService(_config(tmp_path))
    service.start()
    try:
        farm = service.farm
        from controller.manifests.validate import validate_texts
        from controller.sources.apply import Origin

        text = ("apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata: {name: s1}\nspec: {command: [echo]}\n"
                "---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: j1}\nspec: {scenario: s1, priority: low}\n"
                "---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: j2}\nspec: {scenario: s1, priority: live}\n")
        farm.apply([o.manifest for o in validate_texts({"t": text}).objects], Origin("api"))
        service.loop.run_once()
        exposition = service.metrics.exposition().decode()
        assert 'ffrtmp_master_pending_jobs{priority="low"} 1.0' in exposition
        assert "ffrtmp_master_queue_depth_total 2.0" in exposition
        assert "ffrtmp_master_reconcile_duration_seconds_count" in exposition
        reply = farm.heartbeat("w1", 1, running=[])
        assert [a.job for a in reply.assignments] == ["j2"]
        farm.report("j2", 1, "running")
        farm.report("j2", 1, "running")
        assert "ffrtmp_master_submit_to_start_seconds_count 1.0" in service.metrics.exposition().decode()
    finally:
        service.stop()


def test_readyz_says_stopping_during_shutdown(tmp_path: Path) -> None:
    service = ControllerService(_config(tmp_path))
    service.start()
    try:
        transport = httpx.ASGITransport(app=service.app)

        async def probe() -> tuple[int, dict[str, Any]]:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.get("/readyz")
                return response.status_code, response.json()

        import asyncio

        assert asyncio.run(probe())[0] == 200
        service.begin_shutdown()
        status, body = asyncio.run(probe())
        assert status == 503 and body["stopping"] is True
    finally:
        service.stop()


def test_the_watched_directory_feeds_the_reconcile_pass(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "a.yaml").write_text(
        "apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata: {name: s1}\nspec: {command: [echo]}\n"
        "---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: from-file}\nspec: {scenario: s1}\n"
    )
    service = ControllerService(_config(tmp_path))
    service.start()
    try:
        service.loop.run_once()
        with service.store.read() as session:
            job = views.get_job(session, "from-file", service.config)
            files = [f.to_json() for f in list_manifest_files(session)]
        assert job is not None and (job.source, job.source_path) == ("file", "a.yaml")
        assert [(f["path"], f["status"]) for f in files] == [("a.yaml", "ok")]
    finally:
        service.stop()
