"""Each route's happy path and its error statuses, through the TestClient, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from controller.sources.apply import Origin

SCENARIO = """\
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: test1}
spec:
  command: [echo, "{word}"]
  defaults: {word: hello}
"""
JOB = """\
apiVersion: ffrtmp.io/v1
kind: Job
metadata: {{name: {name}}}
spec: {{scenario: test1, priority: {priority}}}
"""


@pytest.fixture
def h(api: Any) -> dict[str, str]:
    """Admin headers."""
    return api.headers()


def _apply(api: Any, h: dict[str, str], text: str, dry_run: bool = False) -> Any:
    query = "?dryRun=true" if dry_run else ""
    return api.client.post(f"/apply{query}", content=text,
                           headers={**h, "Content-Type": "application/yaml"})


def _error(response: Any, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code
    return str(body["error"]["message"])


def test_jobs_lifecycle(api: Any, h: dict[str, str]) -> None:
    c = api.client
    assert _apply(api, h, SCENARIO).json()["results"][0]["result"] == "created"
    created = c.post("/jobs", json={"scenario": "test1", "priority": "live", "name": "j1",
                                    "parameters": {"word": "x"}, "maxRetries": 1,
                                    "retryPolicy": {"failOnExitCodes": [2]}}, headers=h)
    assert created.status_code == 201
    job = created.json()
    assert (job["name"], job["priority"], job["status"], job["maxRetries"]) == ("j1", "live", "pending", 1)
    assert job["failOnExitCodes"] == [2] and job["source"] == "api" and job["createdAt"].endswith("Z")
    _error(c.post("/jobs", json={"scenario": "test1", "name": "j1"}, headers=h), 409, "Conflict")
    _error(c.post("/jobs", json={"scenario": "test1", "priority": "urgent"}, headers=h), 422, "ValidationError")
    assert "unknown field" in _error(c.post("/jobs", json={"scenario": "test1", "bogus": 1}, headers=h), 422)
    _error(c.post("/jobs", content=b"{not json", headers={**h, "Content-Type": "application/json"}), 400, "BadRequest")
    generated = c.post("/jobs", json={"scenario": "test1"}, headers=h).json()
    assert generated["name"].startswith("test1-")

    assert c.get("/jobs/j1", headers=h).json()["attempts"] == []
    _error(c.get("/jobs/nope", headers=h), 404, "NotFound")
    _error(c.get("/jobs/NOT_A_NAME", headers=h), 422)

    patched = c.patch("/jobs/j1", json={"priority": "batch", "labels": {"team": "news"}}, headers=h)
    assert patched.status_code == 200 and patched.json()["priority"] == "batch"
    assert patched.json()["labels"] == {"team": "news"}
    _error(c.patch("/jobs/j1", json={"priority": "nope"}, headers=h), 422)
    _error(c.patch("/jobs/j1", json={"name": "other"}, headers=h), 422)
    _error(c.patch("/jobs/nope", json={"priority": "low"}, headers=h), 404)

    cancelled = c.post("/jobs/j1/cancel", headers=h)
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["reason"] == "Cancelled"
    _error(c.post("/jobs/j1/cancel", headers=h), 409)
    assert c.post("/jobs/j1/retry", headers=h).json()["status"] == "pending"
    _error(c.post("/jobs/j1/retry", headers=h), 409)
    assert c.get("/jobs/j1/logs", headers=h).json() == {"job": "j1", "attempts": []}
    _error(c.get("/jobs/nope/logs", headers=h), 404)
    deleted = c.delete("/jobs/j1", headers=h)
    assert deleted.status_code == 204 and deleted.content == b""
    _error(c.get("/jobs/j1", headers=h), 404)
    _error(c.delete("/jobs/j1", headers=h), 404)
    events = [e["eventType"] for e in c.get("/audit?entityType=job&entityId=j1", headers=h).json()["items"]]
    assert events[0] == "job.created" and events[-1] == "job.deleted"


def test_lists_filter_and_paginate(api: Any, h: dict[str, str]) -> None:
    c = api.client
    _apply(api, h, SCENARIO + "---\n" + "---\n".join(
        JOB.format(name=f"j{i}", priority=p) for i, p in enumerate(["live", "low", "low"])))
    page = c.get("/jobs?limit=2", headers=h).json()
    assert [j["name"] for j in page["items"]] == ["j0", "j1"] and page["next"]
    rest = c.get(f"/jobs?limit=2&cursor={page['next']}", headers=h).json()
    assert [j["name"] for j in rest["items"]] == ["j2"] and rest["next"] is None
    assert [j["name"] for j in c.get("/jobs?priority=low", headers=h).json()["items"]] == ["j1", "j2"]
    assert c.get("/jobs?status=running", headers=h).json() == {"items": [], "next": None}
    assert c.get("/jobs?node=worker-1", headers=h).json()["items"] == []
    _error(c.get("/jobs?status=bogus", headers=h), 422)
    _error(c.get("/jobs?limit=0", headers=h), 422)
    _error(c.get("/jobs?limit=1001", headers=h), 422)
    _error(c.get("/jobs?cursor=bm9wZQ", headers=h), 400, "BadRequest")
    assert len(c.get("/jobs?limit=1000", headers=h).json()["items"]) == 3

    audit = c.get("/audit?limit=2", headers=h).json()
    assert len(audit["items"]) == 2 and audit["next"]
    ids = [e["id"] for e in audit["items"]]
    assert ids == sorted(ids)
    later = c.get(f"/audit?cursor={audit['next']}&limit=1000", headers=h).json()["items"]
    assert later[0]["id"] > ids[-1]
    assert all(e["eventType"] == "job.created" for e in c.get("/audit?eventType=job.created", headers=h).json()["items"])
    assert c.get("/audit?since=2999-01-01T00:00:00Z", headers=h).json()["items"] == []
    _error(c.get("/audit?since=yesterday", headers=h), 422)

    stats = c.get("/queue/stats", headers=h).json()
    assert stats["totalPending"] == 3 and stats["byPriority"] == {"live": 1, "high": 0, "medium": 0, "low": 2, "batch": 0}


def test_apply_results_dry_run_and_formats(api: Any, h: dict[str, str]) -> None:
    c = api.client
    dry = _apply(api, h, SCENARIO, dry_run=True).json()
    assert dry == {"results": [{"kind": "Scenario", "name": "test1", "result": "created", "error": None,
                                "line": None}], "dryRun": True}
    assert c.get("/audit?eventType=scenario.created", headers=h).json()["items"] == []
    assert _apply(api, h, SCENARIO).json()["results"][0]["result"] == "created"
    assert _apply(api, h, SCENARIO).json()["results"][0]["result"] == "unchanged"
    changed = SCENARIO.replace("hello", "bye")
    assert _apply(api, h, changed).json()["results"][0]["result"] == "configured"

    bad = JOB.format(name="j1", priority="urgent") + "---\n" + JOB.format(name="j2", priority="low")
    results = _apply(api, h, bad).json()["results"]
    assert [(r["name"], r["result"]) for r in results] == [("j1", "error"), ("j2", "created")]
    assert results[0]["line"] == 4 and "spec.priority" in results[0]["error"]
    broken = _apply(api, h, "kind: [unclosed\n").json()["results"]
    assert broken[0]["result"] == "error" and broken[0]["line"] >= 1 and "YAML" in broken[0]["error"]

    objects = [{"apiVersion": "ffrtmp.io/v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"slots": 2}}]
    as_list = c.post("/apply", json=objects, headers=h).json()["results"]
    assert as_list[0]["result"] == "created"
    as_items = c.post("/apply", json={"items": objects}, headers=h).json()["results"]
    assert as_items[0]["result"] == "unchanged"
    _error(c.post("/apply", content=b"x", headers={**h, "Content-Type": "text/plain"}), 415)


def test_objects_owned_by_a_file_are_refused_with_the_file_named(api: Any, h: dict[str, str]) -> None:
    from controller.manifests.validate import validate_texts

    text = SCENARIO + "---\n" + JOB.format(name="owned", priority="low")
    parsed = validate_texts({"a.yaml": text}).objects
    api.farm.apply([o.manifest for o in parsed], Origin("file", "manifests/a.yaml"))
    c = api.client
    assert "manifests/a.yaml" in _error(c.patch("/jobs/owned", json={"priority": "live"}, headers=h), 409)
    assert "manifests/a.yaml" in _error(c.delete("/jobs/owned", headers=h), 409)
    refused = _apply(api, h, JOB.format(name="owned", priority="live") + "---\n" + JOB.format(name="free", priority="low"))
    assert refused.status_code == 409
    body = refused.json()
    assert "manifests/a.yaml" in body["error"]["message"] and body["error"]["code"] == "Conflict"
    assert [r["result"] for r in body["results"]] == ["error", "created"]
    assert c.get("/jobs/owned", headers=h).json()["priority"] == "low"


def test_nodes_heartbeat_and_reports(api: Any, h: dict[str, str]) -> None:
    c = api.client
    _apply(api, h, SCENARIO + "---\n" + JOB.format(name="j1", priority="high"))
    _error(c.get("/nodes/w1", headers=h), 404)
    beat = c.post("/nodes/w1/heartbeat", json={"slots": 1, "labels": {"zone": "a"}, "running": []}, headers=h)
    assert beat.status_code == 200
    reply = beat.json()
    assert reply["heartbeatIntervalSeconds"] == 10.0 and reply["cancel"] == []
    assert reply["assignments"] == [{"job": "j1", "attempt": 1, "command": ["echo", "hello"],
                                     "activeDeadlineSeconds": None}]
    # Sent again until the worker reports it running (or lists it as held).
    again = c.post("/nodes/w1/heartbeat", json={"running": []}, headers=h).json()
    assert [a["job"] for a in again["assignments"]] == ["j1"]
    node = c.get("/nodes/w1", headers=h).json()
    assert (node["status"], node["running"], node["labels"]) == ("ready", 1, {"zone": "a"})
    assert [n["name"] for n in c.get("/nodes?status=ready", headers=h).json()["items"]] == ["w1"]
    _error(c.get("/nodes?status=bogus", headers=h), 422)

    first = c.post("/jobs/j1/attempts/1", json={"state": "running"}, headers=h).json()
    assert first == {"job": "j1", "attempt": 1, "status": "running", "applied": True}
    assert c.post("/jobs/j1/attempts/1", json={"state": "running"}, headers=h).json()["applied"] is False
    assert c.post("/nodes/w1/heartbeat", json={"running": [{"job": "j1", "attempt": 1}]}, headers=h).json()["assignments"] == []
    _error(c.post("/jobs/j1/attempts/2", json={"state": "completed"}, headers=h), 409, "StaleAttempt")
    stale = c.get("/audit?eventType=job.stale_report", headers=h).json()["items"]
    assert stale[0]["entityId"] == "j1" and stale[0]["details"]["attempt"] == 2
    _error(c.post("/jobs/nope/attempts/1", json={"state": "running"}, headers=h), 404)
    _error(c.post("/jobs/j1/attempts/0", json={"state": "running"}, headers=h), 422)
    _error(c.post("/jobs/j1/attempts/1", json={"state": "exploded"}, headers=h), 422)

    done = c.post("/jobs/j1/attempts/1", json={"state": "completed", "exitCode": 0, "logTail": "ok\n",
                                               "result": {"frames": 300}}, headers=h).json()
    assert done["status"] == "completed" and done["applied"] is True
    assert c.post("/jobs/j1/attempts/1", json={"state": "completed", "exitCode": 0}, headers=h).json()["applied"] is False
    logs = c.get("/jobs/j1/logs", headers=h).json()
    assert logs["attempts"] == [{"attempt": 1, "node": "w1", "status": "completed", "logTail": "ok\n"}]
    held = c.post("/nodes/w1/heartbeat", json={"running": [{"job": "j1", "attempt": 1}]}, headers=h).json()
    assert held["cancel"] == [{"job": "j1", "attempt": 1}]

    assert c.delete("/nodes/w1", headers=h).status_code == 204
    _error(c.delete("/nodes/w1", headers=h), 404)
    _error(c.post("/nodes/Bad_Name/heartbeat", json={}, headers=h), 422)


def test_cancel_reaches_the_worker(api: Any, h: dict[str, str]) -> None:
    c = api.client
    _apply(api, h, SCENARIO + "---\n" + JOB.format(name="j1", priority="high"))
    c.post("/nodes/w1/heartbeat", json={"running": []}, headers=h)
    c.post("/jobs/j1/attempts/1", json={"state": "running"}, headers=h)
    c.post("/jobs/j1/cancel", headers=h)
    reply = c.post("/nodes/w1/heartbeat", json={"running": [{"job": "j1", "attempt": 1}]}, headers=h).json()
    assert reply["cancel"] == [{"job": "j1", "attempt": 1}]


def test_tokens(api: Any, h: dict[str, str]) -> None:
    c = api.client
    created = c.post("/auth/tokens", json={"clientId": "w-01", "role": "worker", "node": "w-01",
                                           "expiresMinutes": 0.5}, headers=h)
    assert created.status_code == 201
    token = created.json()
    assert token["token"].startswith("ffr_") and token["role"] == "worker" and token["node"] == "w-01"
    listed = c.get("/auth/tokens?clientId=w-01", headers=h).json()["items"]
    assert [t["id"] for t in listed] == [token["id"]] and "token" not in listed[0]
    assert token["token"] not in c.get("/auth/tokens", headers=h).text
    _error(c.post("/auth/tokens", json={"clientId": "w", "role": "worker"}, headers=h), 422)
    _error(c.post("/auth/tokens", json={"clientId": "v", "role": "viewer", "node": "n1"}, headers=h), 422)
    _error(c.post("/auth/tokens", json={"clientId": "v", "role": "root"}, headers=h), 422)
    _error(c.post("/auth/tokens", json={"clientId": "v", "role": "viewer", "expiresMinutes": -1}, headers=h), 422)
    worker = {"Authorization": f"Bearer {token['token']}"}
    assert c.post("/nodes/w-01/heartbeat", json={}, headers=worker).status_code == 200
    assert c.delete(f"/auth/tokens/{token['id']}", headers=h).status_code == 204
    assert c.delete(f"/auth/tokens/{token['id']}", headers=h).status_code == 204
    _error(c.post("/nodes/w-01/heartbeat", json={}, headers=worker), 401)
    _error(c.delete("/auth/tokens/tok_ffffffffffff", headers=h), 404)
    events = [e["eventType"] for e in c.get("/audit?entityType=token", headers=h).json()["items"]]
    assert events.count("token.revoked") == 1


def test_manifests_status(api: Any, h: dict[str, str]) -> None:
    from datetime import UTC, datetime

    from controller.store.models import ManifestFile

    assert api.client.get("/manifests", headers=h).json() == {"items": [], "next": None}
    with api.store.write() as session:
        for path in ("a.yaml", "b.yaml"):
            session.add(ManifestFile(path=path, status="invalid" if path == "b.yaml" else "ok",
                                     errors=[{"line": 3, "field": "spec.slots", "message": "bad"}] if path == "b.yaml" else [],
                                     objects=["Job/x"] if path == "a.yaml" else [],
                                     applied_at=datetime(2026, 1, 1, tzinfo=UTC),
                                     updated_at=datetime(2026, 1, 1, tzinfo=UTC)))
    page = api.client.get("/manifests?limit=1", headers=h).json()
    assert page["items"][0]["path"] == "a.yaml" and page["items"][0]["objects"] == ["Job/x"]
    rest = api.client.get(f"/manifests?cursor={page['next']}", headers=h).json()
    assert rest["items"][0]["status"] == "invalid" and rest["items"][0]["errors"][0]["line"] == 3
    assert rest["next"] is None


def test_probes_metrics_and_docs(api: Any, h: dict[str, str]) -> None:
    c = api.client
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["schemaRevision"] == ready.json()["schemaHead"]
    metrics = c.get("/metrics", headers=h)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "ffrtmp_master_queue_depth_total" in metrics.text
    spec = c.get("/openapi.json", headers=h).json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "JobCreate" in spec["components"]["schemas"] and "HeartbeatOut" in spec["components"]["schemas"]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    waits = [p for p in spec["paths"]["/nodes/{name}/heartbeat"]["post"]["parameters"] if p["name"] == "waitSeconds"]
    assert waits and "Long-poll" in waits[0]["description"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "200" in operation["responses"] or "201" in operation["responses"] or "204" in operation["responses"], (path, method)
    assert "swagger" in c.get("/docs", headers=h).text.lower()
    _error(c.get("/no/such/route", headers=h), 404, "NotFound")
    _error(c.put("/jobs", headers=h), 405, "MethodNotAllowed")


def test_readyz_is_unready_on_a_stale_schema(make_api: Any) -> None:
    api = make_api()
    with api.store.write() as session:
        import sqlalchemy as sa

        session.execute(sa.text("UPDATE alembic_version SET version_num = 'old'"))
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["database"] == "schema not current" and response.json()["schemaRevision"] == "old"


def test_metrics_public_and_auth_off(make_api: Any) -> None:
    public = make_api(metrics={"public": True})
    assert public.client.get("/metrics").status_code == 200
    assert public.client.get("/jobs").status_code == 401
    off = make_api(auth={"enabled": False})
    assert off.client.get("/jobs").status_code == 200
    assert off.client.post("/auth/tokens", json={"clientId": "x", "role": "viewer"}).status_code == 201
