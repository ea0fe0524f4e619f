"""The worker protocol's lane answers exactly as the routes do.

A query parameter the lane does not take (`draining=false` for a heartbeat, any for a
report: FastAPI ignores unknown ones) sends the same request through FastAPI's route,
so each case is asked both ways and the answers compared.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from controller.store.models import AuditLog

from .conftest import SCENARIO

JOBS = "".join(
    f"---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec: {{scenario: test1}}\n"
    for name in ("a-1", "b-22")
)


def both(api: Any, path: str, body: Any, headers: dict[str, str], route_query: str) -> tuple[Any, Any]:
    lane = api.client.post(path, json=body, headers=headers)
    route = api.client.post(path + route_query, json=body, headers=headers)
    return (lane.status_code, lane.json()), (route.status_code, route.json())


def stale_rows(api: Any) -> int:
    with api.store.read() as session:
        return int(session.execute(sa.select(sa.func.count()).select_from(AuditLog)
                                   .where(AuditLog.event_type == "job.stale_report")).scalar_one())


def test_heartbeats_answer_the_same_both_ways(api: Any) -> None:
    worker = api.headers("worker", node="w1")
    api.client.post("/apply", content=SCENARIO, headers={**api.headers(), "Content-Type": "application/yaml"})
    idle = {"slots": 2, "labels": {}, "running": []}
    lane, route = both(api, "/nodes/w1/heartbeat", idle, worker, "?draining=false")
    assert lane == route == (200, {"assignments": [], "cancel": [], "heartbeatIntervalSeconds": 10.0})
    for body in ({"slots": 0}, {"slots": 2, "running": "no"}, {"slots": 2, "extra": 1}, [1]):
        lane, route = both(api, "/nodes/w1/heartbeat", body, worker, "?draining=false")
        assert lane == route and lane[0] == 422, body
    lane, route = both(api, "/nodes/w2/heartbeat", idle, worker, "?draining=false")  # another node
    assert lane == route and lane[0] == 403
    bad_wait = api.client.post("/nodes/w1/heartbeat?waitSeconds=-1", json=idle, headers=worker)
    assert bad_wait.status_code == 422  # not taken by the lane: the route refuses it


def test_reports_answer_the_same_both_ways_and_a_stale_one_is_audited_once(api: Any) -> None:
    admin = api.headers()
    api.client.post("/apply", content=SCENARIO + JOBS, headers={**admin, "Content-Type": "application/yaml"})
    worker = api.headers("worker", node="w1")
    reply = api.client.post("/nodes/w1/heartbeat", json={"slots": 2, "running": []}, headers=worker).json()
    assert sorted(a["job"] for a in reply["assignments"]) == ["a-1", "b-22"]
    # Names with hyphens and attempts beyond one digit are read correctly.
    running = api.client.post("/jobs/b-22/attempts/1", json={"state": "running"}, headers=worker)
    assert running.json() == {"job": "b-22", "attempt": 1, "status": "running", "applied": True}
    lane, route = both(api, "/jobs/b-22/attempts/1", {"state": "running"}, worker, "?via=route")
    assert lane == route == (200, {"job": "b-22", "attempt": 1, "status": "running", "applied": False})
    before = stale_rows(api)
    stale = api.client.post("/jobs/b-22/attempts/12", json={"state": "completed", "exitCode": 0}, headers=worker)
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "StaleAttempt"
    assert "attempt 12" in stale.json()["error"]["message"]
    assert stale_rows(api) == before + 1
    other = api.headers("worker", node="w9")
    lane, route = both(api, "/jobs/b-22/attempts/1", {"state": "completed"}, other, "?via=route")
    assert lane == route and lane[0] == 403
    lane, route = both(api, "/jobs/nope/attempts/1", {"state": "running"}, worker, "?via=route")
    assert lane == route and lane[0] == 404
    lane, route = both(api, "/jobs/b-22/attempts/1", {"state": "exploded"}, worker, "?via=route")
    assert lane == route and lane[0] == 422
    viewer = api.headers("viewer")
    lane, route = both(api, "/jobs/b-22/attempts/1", {"state": "running"}, viewer, "?via=route")
    assert lane == route and lane[0] == 403
    done = api.client.post("/jobs/b-22/attempts/1", json={"state": "completed", "exitCode": 0}, headers=worker)
    assert done.json() == {"job": "b-22", "attempt": 1, "status": "completed", "applied": True}
