"""`controller.client.Client` against the app in-process: one call per route, errors as ApiError."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from controller.client import ApiError, Client

SCENARIO = """\
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: test1}
spec:
  command: [echo, "{word}"]
  defaults: {word: hello}
"""


def client_for(api: Any, token: str | None) -> Client:
    return Client("http://testserver", token, transport=api.client._transport)


def test_every_method(api: Any) -> None:
    c = client_for(api, api.token())
    assert c.apply(SCENARIO)["results"][0]["result"] == "created"
    assert c.apply([{"apiVersion": "ffrtmp.io/v1", "kind": "Node", "metadata": {"name": "w1"}}],
                   dry_run=True)["dryRun"] is True
    job = c.submit_job("test1", "high", {"word": "x"}, name="j1", maxRetries=1)
    assert job["maxRetries"] == 1
    assert [j["name"] for j in c.iter_jobs(priority="high")] == ["j1"]
    assert c.list_jobs(status="pending", limit=1)["items"][0]["name"] == "j1"
    assert c.set_priority("j1", "live")["priority"] == "live"
    reply = c.heartbeat("w1", slots=1, labels={"a": "b"}, running=[])
    assert reply["assignments"][0]["job"] == "j1"
    assert c.report("j1", 1, "running")["applied"] is True
    with pytest.raises(ApiError) as stale:
        c.report("j1", 2, "completed", exit_code=0)
    assert (stale.value.status, stale.value.code) == (409, "StaleAttempt")
    assert c.report("j1", 1, "failed", exit_code=3, log_tail="boom")["status"] == "pending"
    assert c.job_logs("j1")["attempts"][0]["logTail"] == "boom"
    assert c.get_node("w1")["status"] == "ready" and c.list_nodes()["items"][0]["name"] == "w1"
    assert c.cancel_job("j1")["status"] == "cancelled"
    assert c.retry_job("j1")["status"] == "pending"
    assert c.queue_stats()["totalPending"] == 1
    assert c.audit(entity_type="job", entity_id="j1", limit=1)["next"]
    assert c.list_manifests() == {"items": [], "next": None}
    token = c.create_token("ci", "viewer", expires_minutes=5)
    assert [t["id"] for t in c.list_tokens(client_id="ci")["items"]] == [token["id"]]
    c.revoke_token(token["id"])
    c.delete_job("j1")
    c.delete_node("w1")
    with pytest.raises(ApiError) as missing:
        c.get_job("j1")
    assert (missing.value.status, missing.value.code) == (404, "NotFound")
    assert c.healthz() == {"status": "ok"} and c.readyz()["status"] == "ready"
    assert "ffrtmp_master_" in c.metrics() and "/jobs" in c.openapi()["paths"]


def test_errors_carry_status_code_and_retry_after(make_api: Any) -> None:
    api = make_api(auth={"rateLimitPerMinute": 1})
    with pytest.raises(ApiError) as anonymous:
        client_for(api, None).queue_stats()
    assert (anonymous.value.status, anonymous.value.code) == (401, "Unauthorized")
    c = client_for(api, api.token("viewer"))
    c.queue_stats()
    with pytest.raises(ApiError) as limited:
        c.queue_stats()
    assert limited.value.status == 429 and limited.value.retry_after == 60
    with pytest.raises(ApiError) as unreachable:
        Client("http://127.0.0.1:9", "t", timeout=2).healthz()
    assert unreachable.value.status == 0


def test_an_idle_long_poll_learns_of_a_submitted_job_before_its_timeout(api: Any) -> None:
    admin = client_for(api, api.token())
    admin.apply(SCENARIO)
    worker = client_for(api, api.token("worker", "w1"))
    assert worker.heartbeat("w1", slots=1, running=[], wait_seconds=0.05)["assignments"] == []
    replies: list[Any] = []
    poll = threading.Thread(target=lambda: replies.append(
        worker.heartbeat("w1", slots=1, running=[], wait_seconds=8)))
    beats = admin.get_node("w1")["lastHeartbeat"]
    poll.start()
    while admin.get_node("w1")["lastHeartbeat"] == beats:  # the poll's beat is recorded: it waits
        time.sleep(0.005)
    submitted = time.monotonic()
    api.farm.on_change = api.app.state.ctx.notifier.changed
    admin.submit_job("test1", name="j1")
    poll.join(8)
    assert replies and [a["job"] for a in replies[0]["assignments"]] == ["j1"]
    assert time.monotonic() - submitted < 8
