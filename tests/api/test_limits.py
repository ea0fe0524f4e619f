"""Rate limits (429 with Retry-After), the failed-authentication limit, and the body limit (413)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient


def test_rate_limit_answers_429_with_retry_after_and_refills(make_api: Any) -> None:
    api = make_api(auth={"rateLimitPerMinute": 2})
    h = api.headers("viewer")
    assert [api.client.get("/queue/stats", headers=h).status_code for _ in range(2)] == [200, 200]
    refused = api.client.get("/queue/stats", headers=h)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "RateLimited"
    assert refused.headers["retry-after"] == "30"
    # Another client has its own bucket.
    assert api.client.get("/queue/stats", headers=api.headers("viewer", client="other")).status_code == 200
    api.clock.tick(30)
    assert api.client.get("/queue/stats", headers=h).status_code == 200
    assert "ffrtmp_master_rate_limit_exceeded_total 1.0" in api.client.get("/metrics", headers=api.headers(client="admin2")).text


def test_failed_authentications_lock_out_the_address_for_the_minute(make_api: Any) -> None:
    api = make_api(auth={"failedAuthPerMinute": 3})
    good = api.headers("viewer")
    for header in ({}, {"Authorization": "Bearer ffr_nope"}, {"Authorization": "Bearer x"}, {"Authorization": "Basic y"}):
        assert api.client.get("/jobs", headers=header).status_code == 401
    locked = api.client.get("/jobs", headers=good)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) <= 60
    assert locked.json()["error"]["code"] == "RateLimited"
    assert api.client.get("/healthz").status_code == 200  # probes stay open
    elsewhere = TestClient(api.app, client=("10.0.0.9", 4000))
    assert elsewhere.get("/jobs", headers=good).status_code == 200
    api.clock.tick(61)
    assert api.client.get("/jobs", headers=good).status_code == 200
    assert "ffrtmp_master_invalid_tokens_total 2.0" in elsewhere.get("/metrics", headers=api.headers()).text


def test_oversized_body_is_413_with_or_without_content_length(make_api: Any) -> None:
    api = make_api(server={"maxBodyBytes": 1024})
    h = {**api.headers(), "Content-Type": "application/yaml"}
    declared = api.client.post("/apply", content=b"#" * 2048, headers=h)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "PayloadTooLarge"

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"#" * 256

    chunked = api.client.post("/apply", content=chunks(), headers=h)
    assert chunked.status_code == 413, chunked.text
    json_chunked = api.client.post("/jobs", content=chunks(), headers={**api.headers(), "Content-Type": "application/json"})
    assert json_chunked.status_code == 413
    assert api.client.post("/apply", content=b"# small\n", headers=h).status_code == 200
    assert api.client.post("/apply", content=b"#", headers={**h, "Content-Length": "zz"}).status_code == 400
