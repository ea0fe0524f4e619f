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


def test_batched_reports_answer_the_same_both_ways_one_result_each(api: Any) -> None:
    admin = api.headers()
    api.client.post("/apply", content=SCENARIO + JOBS, headers={**admin, "Content-Type": "application/yaml"})
    worker = api.headers("worker", node="w1")
    api.client.post("/nodes/w1/heartbeat", json={"slots": 2, "running": []}, headers=worker)
    before = stale_rows(api)
    batch = {"reports": [
        {"job": "a-1", "attempt": 1, "state": "running"},
        {"job": "b-22", "attempt": 12, "state": "completed", "exitCode": 0},  # stale
        {"job": "nope", "attempt": 1, "state": "running"},
        {"job": "a-1", "attempt": 1, "state": "completed", "exitCode": 0, "logTail": "done\n"},
    ]}
    lane = api.client.post("/nodes/w1/reports", json=batch, headers=worker)
    assert lane.status_code == 200
    results = lane.json()["results"]
    assert [(r["job"], r["attempt"], r["status"], r["applied"]) for r in results] == [
        ("a-1", 1, "running", True), ("b-22", 12, None, False), ("nope", 1, None, False),
        ("a-1", 1, "completed", True)]
    assert [r["error"] and r["error"]["code"] for r in results] == [None, "StaleAttempt", "NotFound", None]
    assert stale_rows(api) == before + 1
    # Again, through the lane and through FastAPI's route: nothing new applies, same answers.
    lane, route = both(api, "/nodes/w1/reports", batch, worker, "?via=route")
    assert lane[0] == route[0] == 200 and lane[1] == route[1]
    assert [r["applied"] for r in lane[1]["results"]] == [False, False, False, False]
    assert stale_rows(api) == before + 3
    for body in ({"reports": []}, {"reports": [{"job": "a-1", "attempt": 0, "state": "running"}]},
                 {"reports": [{"job": "a-1", "attempt": 1, "state": "running", "node": "w1"}]},
                 {"reports": [{"job": "a-1", "attempt": 1, "state": "running"}] * 257}):
        lane, route = both(api, "/nodes/w1/reports", body, worker, "?via=route")
        assert lane == route and lane[0] == 422, body
    other, viewer = api.headers("worker", node="w9"), api.headers("viewer")
    for headers in (other, viewer):
        lane, route = both(api, "/nodes/w1/reports", batch, headers, "?via=route")
        assert lane[0] == route[0] == 403
        assert lane[1]["error"]["code"] == route[1]["error"]["code"] == "Forbidden"
    # A worker of another node may not report this node's attempts through its own path either.
    mine = api.client.post("/nodes/w9/reports", json=batch, headers=other).json()["results"]
    assert [r["error"] and r["error"]["code"] for r in mine] == ["Forbidden", "StaleAttempt", "NotFound", "Forbidden"]


def test_submissions_answer_the_same_both_ways(api: Any) -> None:
    admin = api.headers()
    needs = "---\napiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata: {name: needs}\nspec: {command: [echo, '{x}']}\n"
    api.client.post("/apply", content=SCENARIO + needs, headers={**admin, "Content-Type": "application/yaml"})
    body = {"scenario": "test1", "priority": "high", "parameters": {"n": 1}, "labels": {"team": "a"},
            "maxRetries": 2, "nodeSelector": {"gpu": "yes"}, "retryPolicy": {"failOnExitCodes": [3]}}
    lane = api.client.post("/jobs", json={**body, "name": "via-lane"}, headers=admin)
    route = api.client.post("/jobs?via=route", json={**body, "name": "via-route"}, headers=admin)
    assert lane.status_code == route.status_code == 201
    # The answer is the job as it is stored: what GET answers, attempts (none yet) included.
    assert lane.json() == api.client.get("/jobs/via-lane", headers=admin).json()
    assert route.json() == api.client.get("/jobs/via-route", headers=admin).json()
    volatile = {"name", "createdAt", "updatedAt"}
    assert {k: v for k, v in lane.json().items() if k not in volatile} == \
        {k: v for k, v in route.json().items() if k not in volatile}
    cases: list[tuple[Any, dict[str, str], int]] = [
        ({**body, "name": "via-lane"}, admin, 409),  # exists
        ({"scenario": "test1", "priority": "urgent"}, admin, 422),
        ({"scenario": "test1", "bogus": 1}, admin, 422),
        ([1], admin, 422),
        ({"scenario": "needs", "name": "x"}, admin, 422),  # no value for {x}
        ({"scenario": "test1", "name": "x"}, api.headers("viewer"), 403),
        ({"scenario": "test1", "name": "x"}, api.headers("worker", node="w1"), 403),
    ]
    for case, headers, status in cases:
        lane_answer, route_answer = both(api, "/jobs", case, headers, "?via=route")
        assert lane_answer == route_answer and lane_answer[0] == status, case
