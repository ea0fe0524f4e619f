"""Every route of the app, by every kind of credential (built from `app.routes`, so none escapes)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from controller.api.security import route_permission
from controller.auth.roles import ROLE_PERMISSIONS, Permission, Role

NODE = "node-x"
PUBLIC = {"/healthz", "/readyz"}
WEAKEST_ALLOWED = {
    Permission.READ: Role.VIEWER,
    Permission.WRITE_JOBS: Role.OPERATOR,
    Permission.WRITE_NODES: Role.OPERATOR,
    Permission.APPLY_MANIFESTS: Role.OPERATOR,
    Permission.MANAGE_TOKENS: Role.ADMIN,
    Permission.WORKER_REPORT: Role.WORKER,
}
DENIED = {
    Permission.READ: Role.WORKER,
    Permission.WRITE_JOBS: Role.VIEWER,
    Permission.WRITE_NODES: Role.VIEWER,
    Permission.APPLY_MANIFESTS: Role.VIEWER,
    Permission.MANAGE_TOKENS: Role.OPERATOR,
    Permission.WORKER_REPORT: Role.OPERATOR,
}


def _permissions(dependant: Dependant) -> set[Permission]:
    found = set()
    for sub in dependant.dependencies:
        permission = route_permission(sub.call)
        if permission is not None:
            found.add(permission)
        found |= _permissions(sub)
    return found


def routes(app: Any) -> list[tuple[str, str, Permission | None]]:
    out = []
    # The app's routes, those of included routers flattened (what the app will route to).
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        assert isinstance(route, APIRoute), f"{route} is not an APIRoute: it escapes the auth check"
        permissions = _permissions(route.dependant)
        assert len(permissions) <= 1, route.path
        for method in sorted(context.methods or ()):
            out.append((method, str(context.path), next(iter(permissions), None)))
    assert out
    return out


def _url(path: str) -> str:
    return (path.replace("/nodes/{name}", f"/nodes/{NODE}").replace("{name}", "job-x")
            .replace("{attempt}", "1").replace("{token_id}", "tok_000000000000"))


def test_the_tables_cover_every_permission_and_agree_with_the_roles() -> None:
    assert set(WEAKEST_ALLOWED) == set(DENIED) == set(Permission)
    for permission, role in WEAKEST_ALLOWED.items():
        assert permission in ROLE_PERMISSIONS[role]
        assert permission not in ROLE_PERMISSIONS[DENIED[permission]]


def test_only_the_probes_are_public(api: Any) -> None:
    public = {path for _, path, permission in routes(api.app) if permission is None}
    assert public == PUBLIC
    paths = {path for _, path, _ in routes(api.app)}
    # Every route of SPEC section 8 is there.
    assert {"/jobs", "/jobs/{name}", "/jobs/{name}/cancel", "/jobs/{name}/retry",
            "/jobs/{name}/logs", "/apply", "/manifests", "/nodes", "/nodes/{name}",
            "/nodes/{name}/heartbeat", "/jobs/{name}/attempts/{attempt}", "/queue/stats",
            "/audit", "/auth/tokens", "/auth/tokens/{token_id}", "/healthz", "/readyz",
            "/metrics", "/openapi.json", "/docs"} <= paths


def test_every_route_by_every_credential(api: Any) -> None:
    client = api.client
    expired = api.token("admin", expires_minutes=1)
    revoked = api.token("admin")
    (revoked_id,) = [t.id for t in api.auth.list_tokens("admin-client")
                     if t.expires_at > api.clock() + timedelta(minutes=5)]
    api.auth.revoke(revoked_id)
    api.clock.tick(120)
    tokens = {role: api.token(role.value, NODE if role is Role.WORKER else None) for role in Role}
    checked = 0
    for method, path, permission in routes(api.app):
        url = _url(path)

        def call(token: str | None, method: str = method, url: str = url) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            return client.request(method, url, headers=headers)

        if permission is None:
            assert call(None).status_code == 200, (method, path)
            continue
        for token, label in ((None, "none"), ("ffr_garbage", "garbage"), ("Basic x", "not-ffr"),
                             (expired, "expired"), (revoked, "revoked")):
            response = call(token)
            assert response.status_code == 401, (method, path, label, response.text)
            assert response.json()["error"]["code"] == "Unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        weak = call(tokens[DENIED[permission]])
        assert weak.status_code == 403, (method, path, weak.text)
        assert weak.json()["error"]["code"] == "Forbidden"
        right = call(tokens[WEAKEST_ALLOWED[permission]])
        assert right.status_code not in (401, 403, 500), (method, path, right.text)
        checked += 1
    assert checked >= 20


def test_a_worker_token_acts_for_its_own_node_only(api: Any) -> None:
    api.client.post("/apply", content=_scenario(), headers=_yaml(api.headers()))
    api.client.post("/jobs", json={"scenario": "test1", "name": "j1"}, headers=api.headers())
    mine = api.headers("worker", "node-a", client="worker-a")
    other = api.headers("worker", "node-b", client="worker-b")
    response = api.client.post("/nodes/node-b/heartbeat", json={}, headers=mine)
    assert response.status_code == 403
    reply = api.client.post("/nodes/node-a/heartbeat", json={"running": []}, headers=mine).json()
    assert reply["assignments"][0]["job"] == "j1"
    # node-b reporting on node-a's attempt, even naming itself: refused before fencing.
    assert api.client.post("/jobs/j1/attempts/1", json={"state": "running"}, headers=other).status_code == 403
    assert api.client.post("/jobs/j1/attempts/1", json={"state": "running", "node": "node-a"},
                           headers=other).status_code == 403
    assert api.client.post("/jobs/j1/attempts/1", json={"state": "running", "node": "node-b"},
                           headers=mine).status_code == 403
    ok = api.client.post("/jobs/j1/attempts/1", json={"state": "running"}, headers=mine)
    assert ok.status_code == 200 and ok.json()["status"] == "running"


def _scenario() -> str:
    return """\
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: test1}
spec:
  command: [echo, "{word}"]
  defaults: {word: hello}
"""


def _yaml(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Content-Type": "application/yaml"}
