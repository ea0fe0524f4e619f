"""The worker's HTTP client against a real HTTP server on loopback (the standard library's)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller.client import ApiError, attempt_report
from controller.worker.wire import WorkerClient


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.connections: set[tuple[str, int]] = set()
        self.close_after_answer = False
        self.hold = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def do_POST(self) -> None:  # the standard library's name
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                     "type": self.headers.get("Content-Type"), "body": body})
        self.server.connections.add(self.client_address)
        if self.path.startswith("/slow"):
            self.server.hold.wait(5)
        status, headers, content = (self.server.answers.pop(0) if self.server.answers
                                    else (200, {}, b'{"ok": true}'))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        if self.server.close_after_answer:
            # As a server closing an idle kept-alive connection: the client's next request on it fails.
            self.close_connection = True

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder()
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    yield recorder
    recorder.hold.set()
    recorder.shutdown()
    recorder.server_close()


def test_heartbeat_and_report_send_what_the_route_expects(server: Recorder) -> None:
    server.answers = [(200, {}, b'{"assignments": [], "cancel": [], "heartbeatIntervalSeconds": 10}'),
                      (200, {}, b'{"job": "j1", "attempt": 2, "status": "completed", "applied": true}')]
    with WorkerClient(server.url, "ffr_secret") as client:
        reply = client.heartbeat("w1", 4, {"gpu": "1"}, [("j1", 2)], wait_seconds=1.5, draining=True)
        done = client.report("j1", 2, "completed", exit_code=0, log_tail="ok\n")
    assert reply == {"assignments": [], "cancel": [], "heartbeatIntervalSeconds": 10}
    assert done["applied"] is True
    beat, report = server.requests
    assert beat == {"path": "/nodes/w1/heartbeat?waitSeconds=1.5&draining=true", "auth": "Bearer ffr_secret",
                    "type": "application/json",
                    "body": {"slots": 4, "labels": {"gpu": "1"}, "running": [{"job": "j1", "attempt": 2}]}}
    assert report["path"] == "/jobs/j1/attempts/2"
    assert report["body"] == {"state": "completed", "exitCode": 0, "logTail": "ok\n"}
    assert len(server.connections) == 1  # one kept-alive connection for both


def test_reports_send_one_batch_in_order(server: Recorder) -> None:
    answer = {"results": [{"job": "j1", "attempt": 2, "status": "completed", "applied": True, "error": None},
                          {"job": "j 2", "attempt": 1, "status": None, "applied": False,
                           "error": {"code": "StaleAttempt", "message": "not current"}}]}
    server.answers = [(200, {}, json.dumps(answer).encode())]
    with WorkerClient(server.url, "ffr_secret") as client:
        reply = client.reports("w-1", [attempt_report("j1", 2, "completed", exit_code=0, log_tail="ok\n"),
                                       attempt_report("j 2", 1, "failed", exit_code=3, reason="DeadlineExceeded")])
    assert reply == answer
    (request,) = server.requests
    assert request["path"] == "/nodes/w-1/reports"
    assert request["body"] == {"reports": [
        {"job": "j1", "attempt": 2, "state": "completed", "exitCode": 0, "logTail": "ok\n"},
        {"job": "j 2", "attempt": 1, "state": "failed", "exitCode": 3, "reason": "DeadlineExceeded"}]}


def test_error_answers_become_api_errors_with_code_and_retry_after(server: Recorder) -> None:
    stale = json.dumps({"error": {"code": "StaleAttempt", "message": "attempt 1 is not current"}}).encode()
    server.answers = [(409, {}, stale), (429, {"Retry-After": "3"}, b'{"error": {"code": "RateLimited"}}')]
    client = WorkerClient(server.url, None)
    with pytest.raises(ApiError) as refused:
        client.report("j1", 1, "running")
    assert (refused.value.status, refused.value.code, refused.value.message) == (
        409, "StaleAttempt", "attempt 1 is not current")
    with pytest.raises(ApiError) as limited:
        client.heartbeat("w1")
    assert (limited.value.status, limited.value.retry_after) == (429, 3.0)
    assert server.requests[1]["auth"] is None


def test_a_connection_the_server_closed_while_idle_is_replaced_once(server: Recorder) -> None:
    server.close_after_answer = True
    client = WorkerClient(server.url, "t")
    for _ in range(3):
        assert client.heartbeat("w1") == {"ok": True}
    assert len(server.requests) == 3  # each sent once: the failed reuse is not counted twice


def test_an_unreachable_controller_is_status_zero() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ApiError) as unreachable:
        WorkerClient(f"http://127.0.0.1:{port}", "t").heartbeat("w1")
    assert (unreachable.value.status, unreachable.value.code) == (0, "Unreachable")


def test_no_answer_in_time_is_a_timeout(server: Recorder) -> None:
    client = WorkerClient(server.url + "/slow", "t", timeout=0.2)
    with pytest.raises(ApiError) as late:
        client.heartbeat("w1")
    assert (late.value.status, late.value.code) == (0, "Timeout")


def test_a_bad_server_url_is_refused_at_once() -> None:
    with pytest.raises(ValueError):
        WorkerClient("ftp://example.org", "t")


def test_an_answer_that_closes_its_connection_is_not_pooled(server: Recorder) -> None:
    server.answers = [(200, {"Connection": "close"}, b'{"n": 1}'), (200, {}, b'{"n": 2}')]
    client = WorkerClient(server.url, "t")
    assert client.heartbeat("w1") == {"n": 1}
    assert client.heartbeat("w1") == {"n": 2}
    assert len(server.connections) == 2 and len(server.requests) == 2
