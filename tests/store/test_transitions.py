"""The one door, the pass and the worker protocol on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import ControllerConfig
from controller.domain.states import JobStatus, Priority, Reason, TransitionRefused
from controller.farm import Farm
from controller.manifests.validate import validate_texts
from controller.reconcile import Reconciler
from controller.sources.apply import Origin
from controller.store import passes, queries, transitions, views
from controller.store.engine import Store
from controller.store.models import AuditLog, Job, JobAttempt
from controller.store.transitions import (
    ConcurrentChange,
    JobTransition,
    _job_details,
    _job_details_text,
    apply_job_transitions,
)

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
CONFIG = ControllerConfig()
MANIFESTS = """
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: enc}
spec: {command: [sleep, "{seconds}"], defaults: {seconds: 1}, expectedDurationSeconds: 10}
""" + "".join(
    f"---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {{name: j{i}}}\nspec: {{scenario: enc, priority: {p}}}\n"
    for i, p in enumerate(["batch", "live", "medium", "high"])
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def seeded(store: Store) -> Farm:
    farm = Farm(store, CONFIG, clock=lambda: T0)
    report = validate_texts({"m.yaml": MANIFESTS})
    assert not report.problems
    farm.apply([o.manifest for o in report.objects], Origin("api"), now=T0)
    return farm


def count(store: Store, table: type) -> int:
    with store.read() as session:
        return int(session.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def job_row(store: Store, name: str) -> sa.Row[tuple[int, str, int]]:
    with store.read() as session:
        return session.execute(
            sa.select(Job.id, Job.status, Job.attempt).where(Job.name == name)  # type: ignore[call-overload]
        ).one()


def test_forbidden_transition_is_refused_and_writes_nothing(store: Store) -> None:
    seeded(store)
    row = job_row(store, "j0")
    audits = count(store, AuditLog)
    with pytest.raises(TransitionRefused), store.write() as session:
        apply_job_transitions(
            session, [JobTransition(row.id, "j0", JobStatus.PENDING, JobStatus.COMPLETED, "x", 0)], at(1)
        )
    assert job_row(store, "j0").status == "pending"
    assert count(store, AuditLog) == audits


def test_stale_observation_aborts_the_whole_transaction(store: Store) -> None:
    seeded(store)
    a, b = job_row(store, "j0"), job_row(store, "j1")
    audits = count(store, AuditLog)
    with pytest.raises(ConcurrentChange), store.write() as session:
        apply_job_transitions(
            session,
            [
                JobTransition(a.id, "j0", JobStatus.PENDING, JobStatus.CANCELLED, str(Reason.CANCELLED), 0),
                # Observed as running, but it is pending: someone else changed it.
                JobTransition(b.id, "j1", JobStatus.RUNNING, JobStatus.CANCELLED, str(Reason.CANCELLED), 0),
            ],
            at(1),
        )
    assert job_row(store, "j0").status == "pending"  # the first one rolled back too
    assert count(store, AuditLog) == audits


_JOB_STATE = ("status", "reason", "message", "node_id", "attempt", "retry_count", "assigned_at", "started_at",
              "finished_at", "timeout_at", "not_before", "updated_at")
_ATTEMPT_STATE = ("attempt", "node_name", "status", "reason", "exit_code", "message", "log_tail", "assigned_at",
                  "started_at", "finished_at")


def _state(store: Store, name: str) -> tuple[dict[str, object], list[dict[str, object]], list[object]]:
    """A job's row, its attempts' history and its transitions' audit details, without ids."""
    with store.read() as session:
        job = session.execute(sa.select(Job).where(Job.name == name)).scalar_one()  # type: ignore[arg-type]
        attempts = session.execute(sa.select(JobAttempt).where(JobAttempt.job_id == job.id)  # type: ignore[arg-type]
                                   .order_by(JobAttempt.attempt)).scalars().all()
        audit = session.execute(sa.select(AuditLog.details)
                                .where(AuditLog.entity_id == name, AuditLog.event_type == "job.transition")  # type: ignore[arg-type]
                                .order_by(AuditLog.id)).scalars().all()
        return ({c: getattr(job, c) for c in _JOB_STATE}, [{c: getattr(a, c) for c in _ATTEMPT_STATE} for a in attempts],
                [json.loads(d) if isinstance(d, str) else d for d in audit])


def _ended_before_its_running_report(job_id: int, attempt: int, name: str,
                                     to: JobStatus = JobStatus.PENDING) -> list[JobTransition]:
    """What a final report of an `assigned` job writes: it ran, and it completed or goes back
    to the queue."""
    started = JobTransition(job_id, name, JobStatus.ASSIGNED, JobStatus.RUNNING, str(Reason.STARTED), attempt,
                            node_name="w1", timeout_at=at(30))
    if to is JobStatus.COMPLETED:
        return [started, JobTransition(job_id, name, JobStatus.RUNNING, to, str(Reason.SUCCEEDED), attempt,
                                       node_name="w1", exit_code=0, log_tail="done")]
    ended = JobTransition(job_id, name, JobStatus.RUNNING, JobStatus.PENDING, str(Reason.EXIT_CODE), attempt,
                          message="exit code 3", node_name="w1", retry_count=1, not_before=at(40), exit_code=3,
                          log_tail="boom")
    return [started, ended]


@pytest.mark.parametrize("to", [JobStatus.COMPLETED, JobStatus.PENDING])
def test_two_steps_of_one_job_in_one_call_leave_what_two_calls_leave(
    store: Store, monkeypatch: pytest.MonkeyPatch, to: JobStatus,
) -> None:
    farm = seeded(store)
    farm.heartbeat("w1", slots=2, now=at(0))  # binds j1 (live) and j3 (high)
    one, two = job_row(store, "j1"), job_row(store, "j3")
    assert one.status == two.status == "assigned"
    guarded: list[list[tuple[object, ...]]] = []
    real = transitions._update_guarded
    monkeypatch.setattr(transitions, "_update_guarded", lambda *a: guarded.append(a[4]) or real(*a))
    with store.write() as session:
        apply_job_transitions(session, _ended_before_its_running_report(one.id, one.attempt, "j1", to), at(5))
    (rows,) = guarded  # the job's row written once, guarded on where the first step found it
    assert len(rows) == 1 and rows[0][-3:] == (one.id, "assigned", one.attempt)
    for step in _ended_before_its_running_report(two.id, two.attempt, "j3", to):
        with store.write() as session:
            apply_job_transitions(session, [step], at(5))
    job1, attempts1, audit1 = _state(store, "j1")
    job3, attempts3, audit3 = _state(store, "j3")
    assert job1 == job3 and job1["status"] == str(to)
    assert (job1["started_at"] is None) is (to is JobStatus.PENDING)  # a requeue clears it
    assert attempts1 == attempts3 and attempts1[-1]["started_at"] is not None
    assert attempts1[-1]["status"] == ("completed" if to is JobStatus.COMPLETED else "requeued")
    assert audit1 == audit3 and [d["to"] for d in audit1] == ["assigned", "running", str(to)]  # type: ignore[index]


def test_two_steps_of_one_job_are_guarded_on_where_the_first_found_it(store: Store) -> None:
    farm = seeded(store)
    farm.heartbeat("w1", slots=1, now=at(0))
    row = job_row(store, "j1")
    before, audits = _state(store, "j1"), count(store, AuditLog)
    with pytest.raises(ConcurrentChange), store.write() as session:  # observed an attempt it no longer has
        apply_job_transitions(session, _ended_before_its_running_report(row.id, row.attempt + 1, "j1"), at(5))
    assert _state(store, "j1") == before and count(store, AuditLog) == audits


def test_pass_schedules_fails_over_and_audits_on_both_engines(store: Store) -> None:
    farm = seeded(store)
    reconciler = Reconciler(store, CONFIG, started_at=T0)
    farm.heartbeat("w1", slots=2, now=at(0))  # the heartbeat path binds the two most urgent
    with store.read() as session:
        assigned = sorted(j.name for j in views.list_jobs(session, CONFIG, status="assigned")[0])
    assert assigned == ["j1", "j3"]  # live, high
    farm.report("j1", 1, "running", now=at(1))
    farm.heartbeat("w2", slots=1, now=at(1))
    result = reconciler.reconcile(at(60.5))  # w1 silent since 0: dead; w2 beat at 1: alive
    assert result.dead_nodes == ["w1"]
    assert sorted(result.requeued) == ["j1", "j3"]
    with store.read() as session:
        j1 = views.get_job(session, "j1", CONFIG)
        chain = [e.details["to"] for e in views.list_audit(session, "job", "j1", "job.transition")[0]]
    assert j1 is not None and (j1.status, j1.reason, j1.retry_count) == ("pending", "NodeLost", 1)
    assert chain == ["assigned", "running", "pending"]
    assert [a.status for a in j1.attempts] == ["requeued"]


def test_pending_queue_scan_reads_in_batches(store: Store) -> None:
    farm = seeded(store)
    with store.read() as session:
        names = [j.name for j in passes.eligible_run(session, Priority.LIVE, at(0), batch=1)]
        everything = [j.name for p in Priority for j in passes.eligible_run(session, p, at(0), batch=1)]
    assert names == ["j1"]
    assert everything == ["j1", "j3", "j2", "j0"]
    farm.heartbeat("w1", slots=10, now=at(0))
    with store.read() as session:
        stats = views.queue_stats(session)
    assert stats["totalAssigned"] == 4 and stats["totalPending"] == 0



def test_the_pending_classes_are_probed_in_one_statement(store: Store) -> None:
    farm = seeded(store)  # one pending job each of batch, live, medium, high
    with store.read() as session:
        assert queries.pending_priorities(session) == [Priority.LIVE, Priority.HIGH, Priority.MEDIUM,
                                                       Priority.BATCH]
    farm.heartbeat("w1", slots=2, now=at(0))  # takes live and high
    with store.read() as session:
        assert queries.pending_priorities(session) == [Priority.MEDIUM, Priority.BATCH]
    farm.heartbeat("w2", slots=2, now=at(1))
    with store.read() as session:
        assert queries.pending_priorities(session) == []


_TEXT = st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    pair=st.sampled_from([(JobStatus.PENDING, JobStatus.ASSIGNED), (JobStatus.ASSIGNED, JobStatus.RUNNING),
                          (JobStatus.RUNNING, JobStatus.PENDING), (JobStatus.RUNNING, JobStatus.FAILED),
                          (JobStatus.COMPLETED, JobStatus.PENDING)]),
    reason=_TEXT, attempt=st.integers(0, 2**31 - 2), node=st.none() | _TEXT,
    retry_count=st.none() | st.integers(0, 100), message=st.none() | _TEXT,
    exit_code=st.none() | st.integers(-255, 255),
    not_before=st.none() | st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])),
)
def test_audit_details_text_is_what_json_dumps_writes(
    pair: tuple[JobStatus, JobStatus], reason: str, attempt: int, node: str | None, retry_count: int | None,
    message: str | None, exit_code: int | None, not_before: datetime | None,
) -> None:
    # SQLite's audit rows are built as text directly; PostgreSQL's from the dict: the same details.
    t = JobTransition(1, "j", pair[0], pair[1], reason, attempt, message=message, node_name=node,
                      retry_count=retry_count, not_before=not_before, exit_code=exit_code)
    assert _job_details_text(t) == json.dumps(_job_details(t))
