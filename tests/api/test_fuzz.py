"""Generated bodies: always a JSON 4xx or a success, never a 500; a refusal changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCENARIO = """\
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: test1}
spec:
  command: [echo, "{word}"]
  defaults: {word: hello}
"""

scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def fields(names: list[str], values: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(names) | st.text(max_size=10)
    return st.dictionaries(keys, values, max_size=len(names) + 1)


JOB_FIELDS = ["scenario", "priority", "parameters", "name", "labels", "maxRetries", "expectedDurationSeconds",
              "activeDeadlineSeconds", "nodeSelector", "suspend", "retryPolicy"]
names = st.sampled_from(["test1", "j1", "worker-1", "Bad", "", "a" * 70, "x\x00y"])
job_bodies = fields(JOB_FIELDS, json_values | names | st.sampled_from(["live", "batch", 3, {"word": "x"}]))
beat_bodies = fields(["slots", "labels", "running"], json_values | st.lists(
    st.fixed_dictionaries({"job": names, "attempt": st.integers(-3, 2**40)}), max_size=3))
report_bodies = fields(["state", "exitCode", "message", "logTail", "result", "reason", "node"],
                       json_values | st.sampled_from(["running", "completed", "failed", "released", "DeadlineExceeded"]))


def _check(api: Any, before: dict[str, int], response: Any, stale_audited: bool = False) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body["error"]) == {"code", "message"}, body
        after = api.counts()
        if stale_audited and body["error"]["code"] == "StaleAttempt":
            after["audit_log"] -= 1
        assert after == before, (response.text, before, after)


def _send(api: Any, method: str, url: str, body: Any) -> Any:
    content = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    return api.client.request(method, url, content=content, headers={"Content-Type": "application/json"})


@pytest.fixture
def farm_api(sqlite_api: Any) -> Any:
    sqlite_api.client.post("/apply", content=SCENARIO, headers={"Content-Type": "application/yaml"})
    sqlite_api.client.post("/jobs", json={"scenario": "test1", "name": "j1"})
    sqlite_api.client.post("/nodes/worker-1/heartbeat", json={"running": []})
    return sqlite_api


@SETTINGS
@given(body=job_bodies | json_values)
def test_submit(farm_api: Any, body: Any) -> None:
    before = farm_api.counts()
    _check(farm_api, before, _send(farm_api, "POST", "/jobs", body))


@SETTINGS
@given(body=beat_bodies | json_values, node=st.sampled_from(["worker-1", "worker-2"]))
def test_heartbeat(farm_api: Any, body: Any, node: str) -> None:
    before = farm_api.counts()
    _check(farm_api, before, _send(farm_api, "POST", f"/nodes/{node}/heartbeat", body))


@SETTINGS
@given(body=report_bodies | json_values, attempt=st.integers(1, 3))
def test_report(farm_api: Any, body: Any, attempt: int) -> None:
    before = farm_api.counts()
    _check(farm_api, before, _send(farm_api, "POST", f"/jobs/j1/attempts/{attempt}", body), stale_audited=True)


def _object(kind: Any, name: Any, spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ffrtmp.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


objects = st.builds(_object, st.sampled_from(["Job", "Node", "Scenario", "Thing", 1]), names,
                    fields([*JOB_FIELDS, "slots", "command", "defaults", "unschedulable"]))


@SETTINGS
@given(body=st.lists(objects | json_values, max_size=4) | st.fixed_dictionaries({"items": st.lists(objects, max_size=3)})
       | json_values, dry_run=st.booleans())
def test_apply_json(farm_api: Any, body: Any, dry_run: bool) -> None:
    before = farm_api.counts()
    response = _send(farm_api, "POST", f"/apply?dryRun={str(dry_run).lower()}", body)
    _check(farm_api, before, response)
    if dry_run:
        assert farm_api.counts() == before
    if response.status_code == 200:
        results = response.json()["results"]
        assert all(r["result"] in ("created", "configured", "unchanged", "error") for r in results)
        if all(r["result"] == "error" for r in results):
            assert farm_api.counts() == before


@SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=100))
def test_apply_yaml_text(farm_api: Any, text: str | bytes) -> None:
    before = farm_api.counts()
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    response = farm_api.client.post("/apply", content=raw, headers={"Content-Type": "application/yaml"})
    _check(farm_api, before, response)
    if response.status_code == 200 and all(r["result"] == "error" for r in response.json()["results"]):
        assert farm_api.counts() == before


NASTY = [
    ("POST", "/jobs", '{"scenario": "test1", "parameters": {"word": "a\\u0000b"}}'),
    ("POST", "/jobs", '{"scenario": "test1", "parameters": {"word": "\\ud800"}}'),
    ("POST", "/jobs", '{"scenario": "test1", "parameters": {"word": NaN}}'),
    ("POST", "/jobs", '{"scenario": "test1", "parameters": {"word": 1e999}}'),
    ("POST", "/jobs", '{"scenario": "test1", "parameters": {"n": 123456789012345678901234567890}}'),
    ("POST", "/jobs", '{"scenario": "test1", "labels": {"a": "\\u0000"}}'),
    ("PATCH", "/jobs/j1", '{"labels": {"a\\u0000": "b"}}'),
    ("PATCH", "/jobs/j1", '{"parameters": {"word": "\\u0000"}}'),
    ("POST", "/nodes/worker-1/heartbeat", '{"labels": {"k": "\\ud83d"}}'),
    ("POST", "/jobs/j1/attempts/1", '{"state": "completed", "logTail": "\\u0000"}'),
    ("POST", "/jobs/j1/attempts/1", '{"state": "failed", "result": {"x": NaN}}'),
    ("POST", "/jobs/j1/attempts/1", '{"state": "failed", "exitCode": 99999999999}'),
    ("POST", "/apply", '[{"apiVersion": "ffrtmp.io/v1", "kind": "Scenario", "metadata": {"name": "s2"}, '
                       '"spec": {"command": ["echo", "a\\u0000"]}}]'),
    ("POST", "/auth/tokens", '{"clientId": "a\\u0000", "role": "viewer"}'),
    ("GET", "/audit?entityId=a%00b", ""),
    ("GET", "/jobs/a%00b", ""),
]


@pytest.mark.parametrize(("method", "url", "body"), NASTY)
def test_unstorable_values_are_refused_on_every_database(api: Any, method: str, url: str, body: str) -> None:
    h = api.headers()
    api.client.post("/apply", content=SCENARIO, headers={**h, "Content-Type": "application/yaml"})
    api.client.post("/jobs", json={"scenario": "test1", "name": "j1"}, headers=h)
    api.client.post("/nodes/worker-1/heartbeat", json={"running": []}, headers=h)
    before = api.counts()
    response = api.client.request(method, url, content=body.encode() or None,
                                  headers={**h, "Content-Type": "application/json"})
    if url == "/apply":  # per-object results: the object is an error, the others would go on
        assert response.status_code == 200
        assert [r["result"] for r in response.json()["results"]] == ["error"]
    else:
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()["error"]) == {"code", "message"}
    assert api.counts() == before
