"""End to end, the life of jobs: many at once, priority, latency, cancel, deadline, ffmpeg."""

from __future__ import annotations

import shutil
import signal
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import LiveFarm, gone, wait_for

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def _seconds(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def assert_chain_whole(transitions: list[dict[str, object]], final: str) -> None:
    """Replaying the job's transitions from `pending` ends at `final`, with no gap."""
    state = "pending"
    for entry in transitions:
        details = entry["details"]
        assert isinstance(details, dict)
        assert details["from"] == state, transitions
        state = details["to"]
    assert state == final, transitions


def test_two_workers_run_many_jobs_exactly_once(live: LiveFarm) -> None:
    live.start_workers("many-a", "many-b", slots=3)
    names = [f"many-{i:02d}" for i in range(20)]
    for i, name in enumerate(names):
        live.submit(name, priority=("live", "high", "medium", "low", "batch")[i % 5])
    wait_for(lambda: live.all_completed(names), 40, "every job to complete", every=0.2)
    done = Counter(line.split()[1] for line in live.runs.read_text().splitlines()
                   if line.startswith("done "))
    assert done == dict.fromkeys(names, 1)
    by_job: dict[str, list[dict[str, object]]] = {}
    for entry in live.transitions():
        by_job.setdefault(str(entry["entityId"]), []).append(entry)
    jobs = {j["name"]: j for j in live.admin.iter_jobs(status="completed")}
    for name in names:
        assert (jobs[name]["attempt"], jobs[name]["retryCount"]) == (1, 0)
        assert_chain_whole(by_job[name], "completed")
    assert {jobs[name]["node"] for name in names} == {"many-a", "many-b"}


def test_submit_to_start_with_an_idle_worker(live: LiveFarm, capsys: pytest.CaptureFixture[str]) -> None:
    live.start_worker("idle-a")
    latencies = []
    for i in range(5):
        name = f"quick-{i}"
        live.submit(name)
        job = live.wait_job(name, "completed", timeout=10)
        assert job["startedAt"] is not None
        latencies.append(_seconds(job["startedAt"], job["createdAt"]))
    with capsys.disabled():
        print(f"\n[e2e] submit-to-start with an idle worker ({live.controller.db_url.split(':')[0]}): "
              + ", ".join(f"{s * 1000:.0f} ms" for s in latencies))
    assert max(latencies) < 1.0, latencies


def test_a_live_job_submitted_after_batch_jobs_runs_next(live: LiveFarm) -> None:
    live.start_worker("prio-a", slots=1)
    live.submit("blocker", parameters={"sleep": 1.0})
    live.wait_job("blocker", "running")
    batch = [f"batch-{i}" for i in range(3)]
    for name in batch:
        live.submit(name, priority="batch")
    live.submit("urgent", priority="live")
    wait_for(lambda: live.all_completed(["blocker", "urgent", *batch]), 20, "every job to complete")
    started = {name: live.job(name)["startedAt"] for name in ["urgent", *batch]}
    assert sorted(started, key=lambda n: datetime.fromisoformat(str(started[n]))) == ["urgent", *batch]


def test_cancel_kills_the_whole_process_group(live: LiveFarm) -> None:
    live.start_worker("cancel-a")
    live.submit("doomed", parameters={"sleep": 60, "child": "true"})
    live.wait_job("doomed", "running")
    pids = wait_for(lambda: live.pids("doomed", 1), 10, "the job to record its pids")
    assert len(pids) == 2 and not any(gone(p) for p in pids)
    live.admin.cancel_job("doomed")
    wait_for(lambda: all(gone(p) for p in pids), 10, f"pids {pids} to be gone")
    job = live.job("doomed")
    assert (job["status"], job["reason"]) == ("cancelled", "Cancelled")
    assert live.runs_of("doomed")["done"] == []
    # The slot is free again.
    live.submit("after-cancel")
    live.wait_job("after-cancel", "completed")


def test_deadline_exceeded_follows_the_retry_rule(live: LiveFarm) -> None:
    live.start_worker("deadline-a")
    live.submit("slow", parameters={"sleep": 60, "child": "true"}, activeDeadlineSeconds=0.5, maxRetries=1)
    job = live.wait_job("slow", "failed", timeout=20)
    assert (job["reason"], job["retryCount"], job["attempt"]) == ("MaxRetriesExceeded", 1, 2)
    assert "DeadlineExceeded" in (job["message"] or "")
    assert ("pending", "DeadlineExceeded") in live.reasons("slow")
    assert live.reasons("slow")[-1] == ("failed", "MaxRetriesExceeded")
    assert_chain_whole(live.transitions("slow"), "failed")
    assert [s[0] for s in live.runs_of("slow")["start"]] == ["1", "2"]
    pids = live.pids("slow", 1) + live.pids("slow", 2)
    wait_for(lambda: all(gone(p) for p in pids), 10, f"pids {pids} to be gone")
    assert live.runs_of("slow")["done"] == []


@pytest.mark.skipif(shutil.which("ffmpeg") is None,
                    reason="ffmpeg is not on PATH (CI installs Debian's ffmpeg: .ci/run)")
def test_a_real_ffmpeg_transcode_completes_and_reports(live: LiveFarm) -> None:
    # Through the full `python -m controller worker` command, as operators run it.
    worker = live.start_worker("ffmpeg-a", full_cli=True)
    labels = live.admin.get_node("ffmpeg-a")["labels"]
    assert labels["ffmpeg"] == "true" and labels.get("ffmpeg-version")
    documents = [d for d in yaml.safe_load_all((MANIFESTS / "ffmpeg.yaml").read_text()) if d]
    scenario = next(d for d in documents if d["kind"] == "Scenario")
    assert live.admin.apply([scenario])["results"][0]["result"] in ("created", "unchanged")
    live.jobs.append("h264-small")
    live.admin.submit_job(scenario["metadata"]["name"], "high",
                            {"resolution": "320x240", "duration": 1, "preset": "ultrafast"},
                            name="h264-small")
    job = live.wait_job("h264-small", "completed", "failed", timeout=60)
    assert (job["status"], job["node"]) == ("completed", "ffmpeg-a"), job
    assert job["attempts"][0]["exitCode"] == 0
    assert [a["attempt"] for a in live.admin.job_logs("h264-small")["attempts"]] == [1]
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
