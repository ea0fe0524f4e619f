"""CLI commands against a real controller process: happy paths, golden JSON, exit codes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.client import Client

pytestmark = pytest.mark.e2e

GOLDEN = Path(__file__).parent / "golden"
MANIFESTS = """\
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: echo}
spec: {command: [echo, "{word}"], defaults: {word: hi}}
---
apiVersion: ffrtmp.io/v1
kind: Job
metadata: {name: greet, labels: {team: docs}}
spec: {scenario: echo, priority: high, parameters: {word: hello}}
"""
VOLATILE = ("createdAt", "updatedAt", "assignedAt", "startedAt", "finishedAt", "notBefore")


def stable(items: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: ("<time>" if k in VOLATILE and v else v) for k, v in item.items()} for item in items]


def write(tmp: Path, text: str = MANIFESTS) -> Path:
    path = tmp / "m.yaml"
    path.write_text(text)
    return path


def test_apply_get_describe_and_golden_json(running) -> None:  # type: ignore[no-untyped-def]
    path = write(running.workdir)
    applied = running.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["scenario/echo created", "job/greet created"]
    again = running.cli("apply", "-f", str(path))
    assert again.stdout.splitlines() == ["scenario/echo unchanged", "job/greet unchanged"]

    listed = running.cli("get", "jobs", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    golden = json.loads((GOLDEN / "get-jobs.json").read_text())
    assert stable(json.loads(listed.stdout)) == golden

    table = running.cli("get", "jobs")
    assert table.stdout.split()[:8] == ["NAME", "STATUS", "PRIORITY", "NODE", "ATTEMPT", "RETRIES", "REASON", "AGE"]
    assert "greet" in table.stdout

    described = running.cli("describe", "job", "greet")
    assert described.returncode == 0
    assert "Audit trail" in described.stdout and "job.created" in described.stdout

    as_yaml = running.cli("get", "jobs", "-o", "yaml")
    assert "name: greet" in as_yaml.stdout


def test_diff_exit_codes(running) -> None:  # type: ignore[no-untyped-def]
    path = write(running.workdir)
    changes = running.cli("diff", "-f", str(path))
    assert changes.returncode == 1
    assert "+ job/greet (created)" in changes.stdout
    assert running.cli("apply", "-f", str(path)).returncode == 0
    assert running.cli("diff", "-f", str(path)).returncode == 0
    write(running.workdir, MANIFESTS.replace("priority: high", "priority: low"))
    changed = running.cli("diff", "-f", str(path))
    assert (changed.returncode, changed.stdout.strip()) == (1, "~ job/greet (configured)")
    broken = running.cli("diff", "-f", str(running.workdir / "nope.yaml"))
    assert broken.returncode >= 2


def test_jobs_submit_priority_cancel_retry_queue_and_audit(running) -> None:  # type: ignore[no-untyped-def]
    assert running.cli("apply", "-f", str(write(running.workdir))).returncode == 0
    submitted = running.cli("jobs", "submit", "--scenario", "echo", "--param", "word=yo", "--name", "j1")
    assert (submitted.returncode, submitted.stdout.strip()) == (0, "j1")
    assert running.cli("jobs", "priority", "j1", "live").stdout.strip() == "job/j1 priority live"
    stats = json.loads(running.cli("queue", "stats", "-o", "json").stdout)
    assert stats["byPriority"]["live"] == 1 and stats["totalPending"] == 2
    assert running.cli("jobs", "cancel", "j1").stdout.strip() == "job/j1 cancelled"
    assert running.cli("jobs", "retry", "j1").stdout.strip() == "job/j1 pending"
    audit = json.loads(running.cli("audit", "--entity", "job/j1", "-o", "json").stdout)
    assert [e["details"].get("to") for e in audit if e["eventType"] == "job.transition"] == ["cancelled", "pending"]
    assert running.cli("delete", "job", "j1").stdout.strip() == "job/j1 deleted"


def test_wait_exit_codes_and_logs(running) -> None:  # type: ignore[no-untyped-def]
    assert running.cli("apply", "-f", str(write(running.workdir))).returncode == 0
    timed_out = running.cli("wait", "job", "greet", "--for", "completed", "--timeout", "0.3s")
    assert timed_out.returncode == 3
    assert "timed out" in timed_out.stderr
    with Client(running.url, running.token) as client:  # play the worker's part
        client.heartbeat("w1", 1, running=[])
        client.report("greet", 1, "running")
        client.report("greet", 1, "completed", exit_code=0, log_tail="hello\n")
    done = running.cli("wait", "job", "greet", "--for", "completed", "--timeout", "5s")
    assert (done.returncode, done.stdout.strip()) == (0, "job/greet completed")
    other = running.cli("wait", "job", "greet", "--for", "failed", "--timeout", "5s")
    assert other.returncode == 1
    logs = running.cli("logs", "greet")
    assert logs.stdout == "hello\n"
    assert "attempt 1 on w1" in logs.stderr


def test_errors_are_one_line_without_traceback(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (running.cli("describe", "job", "nope"), 1, "NotFound (404)"),
        (running.cli("get", "jobs", FFRTMP_TOKEN="ffr_wrong"), 1, "(401)"),
        (running.cli("get", "jobs", FFRTMP_SERVER="http://127.0.0.1:9"), 2, "cannot reach the controller"),
        (running.cli("get", "jobs", "-o", "xml"), 2, "xml"),
    ]
    for result, code, needle in cases:
        assert result.returncode == code, (result.args, result.stderr)
        assert needle in result.stderr
        assert "Traceback" not in result.stderr
        assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 4


def test_client_file_supplies_server_and_token(running) -> None:  # type: ignore[no-untyped-def]
    config = running.workdir / "client.yaml"
    config.write_text(f"server: {running.url}\ntoken: {running.token}\n")
    result = running.cli("get", "nodes", "-o", "json", FFRTMP_CLIENT_CONFIG=str(config),
                         FFRTMP_SERVER="", FFRTMP_TOKEN="")
    assert (result.returncode, json.loads(result.stdout or "null")) == (0, []), result.stderr
