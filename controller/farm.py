"""Domain operations of the farm: what the API, the CLI and the test harness call.

Each operation is one write transaction; status changes go through the one door
(`controller.store.transitions`). Callers pass `now` (the harness freezes it);
the API passes the wall clock.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session

from controller.beats import BeatBatcher
from controller.config import ControllerConfig
from controller.domain.policy import retry_or_fail, running_timeout_at
from controller.domain.states import ACTIVE_JOB_STATUSES, JobStatus, NodeStatus, Priority, Reason
from controller.manifests.schema import JobManifest, Manifest, PlaceholderError, render_command
from controller.reconcile import lost_attempt, schedule
from controller.sources.apply import ObjectResult, Origin, Outcome, apply_objects, create_job
from controller.store import queries, views
from controller.store.audit import write_audit
from controller.store.engine import Store
from controller.store.group import GroupCommit, Written
from controller.store.prepared import Prepared, connection_of
from controller.store.queries import scenarios_t
from controller.store.timeouts import expected_seconds
from controller.store.transitions import (
    JobTransition,
    NodeTransition,
    apply_job_transitions,
    apply_node_transitions,
    attempts_t,
    jobs_t,
    nodes_t,
)

log = logging.getLogger("controller.farm")

T = TypeVar("T")
R = TypeVar("R")


class FarmError(Exception):
    """Base of the errors operations raise; the API maps them to status codes."""

    status_code = 400
    code = "BadRequest"


class NotFound(FarmError):
    """No such job or node."""

    status_code = 404
    code = "NotFound"


class Conflict(FarmError):
    """The request contradicts the current state (ownership, immutability, terminal job)."""

    status_code = 409
    code = "Conflict"


class StaleAttempt(Conflict):
    """A worker report names an attempt that is no longer current (fenced)."""

    code = "StaleAttempt"


class WrongNode(FarmError):
    """A worker token reports on an attempt that ran on another node."""

    status_code = 403
    code = "Forbidden"


class InvalidRequest(FarmError):
    """The request is well-formed but not acceptable."""

    status_code = 422
    code = "Invalid"


REPORT_STATES = ("running", "completed", "failed", "released")


@dataclass(frozen=True, slots=True)
class Assignment:
    """Work a node must run: the attempt, the argv and the hard deadline."""

    job: str
    attempt: int
    command: list[str]
    active_deadline_seconds: float | None


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """Answer to a heartbeat: what to start, what to stop, when to call again."""

    assignments: list[Assignment]
    cancel: list[tuple[str, int]]
    heartbeat_interval_seconds: float
    registered: bool = False
    revived: bool = False
    released: bool = False


@dataclass(frozen=True, slots=True)
class ReportResult:
    """Outcome of a worker report: `applied` is False for a duplicate."""

    job: str
    attempt: int
    status: str
    applied: bool


@dataclass(frozen=True, slots=True)
class _Reported:
    """A report as written: its outcome, why it was refused (stale), when it first started."""

    outcome: ReportResult
    stale: str | None
    started: tuple[datetime, datetime] | None  # (createdAt, startedAt) of a first start
    freed: str | None = None  # the node whose slot this report freed


@dataclass
class Farm:
    """Operations over one store with one config; `on_change` wakes the reconcile loop."""

    store: Store
    config: ControllerConfig
    on_change: Callable[[], None] | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    on_started: Callable[[str, datetime, datetime], None] | None = None
    """Called once per job, when its first attempt starts: (job, createdAt, startedAt)."""
    on_handout: Callable[[], None] | None = None
    """Called when a heartbeat took work: more may wait for another idle worker. Without
    it, `on_change` is called instead."""
    on_freed: Callable[[str], None] | None = None
    """Called with a node's name when a report ended an attempt there (a slot is free)."""
    writer: GroupCommit = field(init=False)
    """Writes of many requests in shared transactions (the API's path; `controller.store.group`)."""
    beats: BeatBatcher = field(init=False)
    """Idle heartbeats recorded through `writer` (see `controller.beats`)."""

    def __post_init__(self) -> None:
        postgres = self.store.dialect == "postgresql"
        writers = self.config.database.postgres_writers if postgres else 1
        self.writer = GroupCommit(self.store, writers=writers, savepoints=not postgres)
        self.beats = BeatBatcher(self.writer, self.clock)

    def close(self) -> None:
        """Finish the writes queued for shared transactions; later ones are written alone."""
        self.writer.close()

    def _now(self, now: datetime | None) -> datetime:
        return now if now is not None else self.clock()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _handed_out(self) -> None:
        if self.on_handout is not None:
            self.on_handout()
        else:
            self._changed()

    # --- desired state ----------------------------------------------------------------------

    def apply(
        self,
        manifests: Sequence[Manifest],
        origin: Origin,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> list[ObjectResult]:
        """Create or update objects; per-object results, errors included."""
        at = self._now(now)
        with self.store.write() as session:
            results = apply_objects(session, manifests, origin, at, self.config, dry_run=dry_run)
        if not dry_run and any(r.result in (Outcome.CREATED, Outcome.CONFIGURED) for r in results):
            self._changed()
        return results

    def submit(
        self,
        scenario: str,
        priority: Priority | str = Priority.MEDIUM,
        parameters: Mapping[str, Any] | None = None,
        name: str | None = None,
        spec: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        client_id: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """Create one job from fields (`POST /jobs`); returns its name. 409 if the name exists."""
        job_name, work = self._submit_work(scenario, priority, parameters, name, spec, labels,
                                           client_id, now)
        with self.store.write() as session:
            work(session)
        self._changed()
        return job_name

    def submit_batched(
        self,
        scenario: str,
        priority: Priority | str = Priority.MEDIUM,
        parameters: Mapping[str, Any] | None = None,
        name: str | None = None,
        spec: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        client_id: str | None = None,
    ) -> Written[views.JobView] | None:
        """`submit`, written with other requests' writes; the outcome holds the new job's view.

        None when the writer is closed (shutting down): call `submit` instead.
        """
        job_name, work = self._submit_work(scenario, priority, parameters, name, spec, labels,
                                           client_id, None)

        def unit(session: Session) -> views.JobView:
            work(session)
            view = views.get_job(session, job_name, self.config, with_attempts=False)
            assert view is not None  # created in this very transaction, without attempts
            return view

        return self._write_batched(unit, ("job", job_name), self._submitted)

    def _submitted(self, view: views.JobView) -> views.JobView:
        self._changed()
        return view

    def _submit_work(
        self, scenario: str, priority: Priority | str, parameters: Mapping[str, Any] | None,
        name: str | None, spec: Mapping[str, Any] | None, labels: Mapping[str, str] | None,
        client_id: str | None, now: datetime | None,
    ) -> tuple[str, Callable[[Session], None]]:
        """The job's name and the writes that create it (raising Conflict or InvalidRequest)."""
        job_name = name or f"{scenario}-{secrets.token_hex(3)}"
        body = {
            "apiVersion": "ffrtmp.io/v1",
            "kind": "Job",
            "metadata": {"name": job_name, "labels": dict(labels or {})},
            "spec": {**dict(spec or {}), "scenario": scenario, "priority": str(priority),
                     "parameters": dict(parameters or {})},
        }
        manifest = JobManifest.model_validate(body)
        at = self._now(now)

        def work(session: Session) -> None:
            if queries.job_by_name(session, job_name) is not None:
                raise Conflict(f"job {job_name!r} already exists")
            result = create_job(session, manifest, Origin("api", None, client_id), at)
            if result.result is Outcome.ERROR:
                raise InvalidRequest(result.error or "invalid job")

        return job_name, work

    def patch_job(
        self, name: str, patch: Mapping[str, Any], client_id: str | None = None,
        now: datetime | None = None,
    ) -> ObjectResult:
        """Apply a JSON merge patch of spec fields (and `labels`) to a job (`PATCH /jobs/{name}`)."""
        at = self._now(now)
        with self.store.write() as session:
            row = self._job(session, name)
            body = job_manifest_body(row)
            labels_patch = patch.get("labels", {}) if "labels" in patch else None
            spec_patch = {k: v for k, v in patch.items() if k != "labels"}
            body["spec"] = merge_patch(body["spec"], spec_patch)
            if labels_patch is not None:
                body["metadata"]["labels"] = merge_patch(body["metadata"]["labels"], labels_patch or {})
            try:
                manifest = JobManifest.model_validate(body)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise InvalidRequest(f"{where}: {first['msg']}") from exc
            (result,) = apply_objects(session, [manifest], Origin("api", None, client_id), at,
                                      self.config)
            if result.result is Outcome.ERROR:
                raise (Conflict if result.conflict else InvalidRequest)(result.error or "refused")
        if result.result is Outcome.CONFIGURED:
            self._changed()
        return result

    def set_priority(
        self, name: str, priority: Priority | str, client_id: str | None = None,
        now: datetime | None = None,
    ) -> ObjectResult:
        """Change a job's priority class."""
        return self.patch_job(name, {"priority": str(Priority(priority))}, client_id, now)

    # --- job lifecycle by operators -----------------------------------------------------------

    def cancel(self, name: str, client_id: str | None = None, now: datetime | None = None) -> str:
        """Cancel a non-terminal job; its worker is told to stop the attempt."""
        at = self._now(now)
        with self.store.write() as session:
            row = self._job(session, name)
            status = JobStatus(row.status)
            if status.terminal:
                raise Conflict(f"job {name!r} is already {status}")
            apply_job_transitions(
                session,
                [JobTransition(row.id, name, status, JobStatus.CANCELLED, str(Reason.CANCELLED),
                               row.attempt, message="cancelled by " + (client_id or "operator"),
                               node_name=self._node_name(session, row.node_id))],
                at, client_id,
            )
        self._changed()
        return str(JobStatus.CANCELLED)

    def retry(self, name: str, client_id: str | None = None, now: datetime | None = None) -> str:
        """Send a failed or cancelled job back to pending, its retry count reset."""
        at = self._now(now)
        with self.store.write() as session:
            row = self._job(session, name)
            status = JobStatus(row.status)
            if status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise Conflict(f"job {name!r} is {status}: only failed or cancelled jobs can be retried")
            apply_job_transitions(
                session,
                [JobTransition(row.id, name, status, JobStatus.PENDING, str(Reason.MANUAL_RETRY),
                               row.attempt, message="retried by " + (client_id or "operator"),
                               retry_count=0)],
                at, client_id,
            )
        self._changed()
        return str(JobStatus.PENDING)

    def delete_job(self, name: str, client_id: str | None = None, now: datetime | None = None) -> None:
        """Delete a job (cancelled first when not terminal); its history stays in the audit log."""
        at = self._now(now)
        with self.store.write() as session:
            row = self._job(session, name)
            if row.source == "file":
                raise Conflict(f"job {name!r} is owned by file {row.source_path}: remove it there")
            delete_job_row(session, row, Reason.CANCELLED, at, client_id)
        self._changed()

    def delete_node(self, name: str, client_id: str | None = None, now: datetime | None = None) -> None:
        """Remove a node; its assigned and running jobs are requeued as if it died."""
        at = self._now(now)
        with self.store.write() as session:
            row = queries.node_by_name(session, name, lock=True)
            if row is None:
                raise NotFound(f"node {name!r} not found")
            if row.source == "file":
                raise Conflict(f"node {name!r} is owned by file {row.source_path}: remove it there")
            delete_node_row(session, row, at, self.config, client_id)
        self._changed()

    # --- the worker protocol --------------------------------------------------------------------

    def heartbeat(
        self,
        name: str,
        slots: int | None = None,
        labels: Mapping[str, str] | None = None,
        running: Sequence[tuple[str, int]] | None = None,
        client_id: str | None = None,
        now: datetime | None = None,
        draining: bool = False,
    ) -> HeartbeatReply:
        """Record a heartbeat, reconcile what the worker holds, and hand it its work.

        `running` lists every attempt the worker holds (started, or finished with its
        report not yet acknowledged). None means "not told" (the harness): nothing is
        concluded from absences then. A `draining` worker gets no work: what is assigned
        to it and not held goes back to pending (Released), and once it holds nothing
        the node is marked dead (Released), so nothing is bound to a worker that left.
        """
        work = self._heartbeat_work(name, slots, labels, running, client_id, self._now(now), draining)
        return self._write(work, self._beaten)

    def heartbeat_batched(
        self,
        name: str,
        slots: int | None = None,
        labels: Mapping[str, str] | None = None,
        running: Sequence[tuple[str, int]] | None = None,
        client_id: str | None = None,
        draining: bool = False,
    ) -> Written[HeartbeatReply] | None:
        """`heartbeat`, written with other requests' writes (`controller.store.group`).

        The outcome holds what `heartbeat` returns or raises, once the write has committed.
        None when the writer is closed (shutting down): call `heartbeat` instead.
        """
        work = self._heartbeat_work(name, slots, labels, running, client_id, self._now(None), draining)
        return self._write_batched(work, ("node", name), self._beaten)

    def _beaten(self, reply: HeartbeatReply) -> HeartbeatReply:
        """After the beat's transaction committed: wake whoever the beat concerns."""
        # New capacity, or jobs handed back: the pass may place work. Work handed out:
        # the queue moved, so the next idle worker may find some too (its long-poll is
        # woken); the pass has nothing to do for it.
        if reply.registered or reply.revived or reply.released:
            self._changed()
        elif reply.assignments:
            self._handed_out()
        return reply

    def _heartbeat_work(
        self, name: str, slots: int | None, labels: Mapping[str, str] | None,
        running: Sequence[tuple[str, int]] | None, client_id: str | None, at: datetime, draining: bool,
    ) -> Callable[[Session], HeartbeatReply]:
        """The heartbeat's writes, for one transaction; what follows the commit is `_beaten`."""

        def work(session: Session) -> HeartbeatReply:
            registered = revived = False
            row = queries.node_by_name(session, name, lock=True)
            if row is None:
                if not self.config.nodes.auto_register:
                    raise NotFound(f"node {name!r} is not declared and nodes.autoRegister is off")
                row, registered = self._register(session, name, slots, labels, at, client_id)
            self._record_beat(session, row, slots, labels, at, draining)
            if row.status != str(NodeStatus.READY):
                apply_node_transitions(
                    session,
                    [NodeTransition(row.id, name, NodeStatus(row.status), NodeStatus.READY,
                                    str(Reason.HEARTBEAT))],
                    at, client_id,
                )
                revived = row.status == str(NodeStatus.DEAD)
            held = {(j, a) for j, a in running} if running is not None else None
            # The common beat: an idle worker on an idle node. One probe then spares the
            # fencing query and, when nothing is bound to it below, the assignments query.
            idle = not held and not queries.node_has_active_jobs(session, row.id)
            cancel = [] if idle else self._fence(session, row, held, at, client_id)
            released = False
            if draining:
                released = self._leave(session, row, held, at, client_id)
                assignments: list[Assignment] = []
            else:
                bound = [] if row.unschedulable else schedule(session, at, self.config, only_node=row.id)
                assignments = [] if idle and not bound else self._assignments(session, row.id, held)
            return HeartbeatReply(assignments, cancel, self.config.nodes.heartbeat_interval_seconds,
                                  registered, revived, released)

        return work

    def _register(
        self, session: Session, name: str, slots: int | None, labels: Mapping[str, str] | None,
        at: datetime, client_id: str | None,
    ) -> tuple[Any, bool]:
        """The node of a first beat, inserted; (its row, whether this beat registered it).

        Two first beats of one node at once (two replicas, or a retried request): the
        name is unique, so the one whose insert loses finds the other's row instead. Only
        this insert takes a savepoint (`queries.insert_node_unless_taken`): a beat of a
        known node, the common one, takes none.
        """
        inserted = queries.insert_node_unless_taken(
            session, name=name, status=str(NodeStatus.UNKNOWN), slots=slots or 1, labels={},
            reported_labels=dict(labels or {}), unschedulable=False, declared=False,
            status_changed_at=at, source="heartbeat", created_at=at, updated_at=at,
        )
        if not inserted:
            log.info("[FaultTolerance] Node %s was registered concurrently", name)
            row = queries.node_by_name(session, name, lock=True)
            if row is None:
                raise Conflict(f"node {name!r} was registered and removed concurrently: beat again")
            return row, False
        write_audit(session, "node.registered", "node", name,
                    {"source": "heartbeat", "declared": False, "slots": slots or 1}, at, client_id)
        log.info("[FaultTolerance] Registered node %s from its first heartbeat", name)
        return queries.node_by_name(session, name, lock=True), True

    def _record_beat(
        self, session: Session, row: Any, slots: int | None, labels: Mapping[str, str] | None,
        at: datetime, draining: bool,
    ) -> None:
        values: dict[str, Any] = {"last_heartbeat": at}
        if draining != row.draining:
            # Stored, so that the pass binds nothing to a node whose worker is leaving (its
            # running jobs may take the whole grace); a heartbeat without the flag clears it.
            values["draining"] = draining
        if labels is not None and dict(labels) != row.reported_labels:
            values["reported_labels"] = dict(labels)
        # A declared node's slots are desired state; a self-registered one reports its own.
        if slots is not None and not row.declared and slots != row.slots:
            values["slots"] = slots
            values["updated_at"] = at
        if len(values) == 1:  # the common beat: only its time changes
            _BEAT.execute(connection_of(session), at=at, id=row.id)
        else:
            session.execute(sa.update(nodes_t).where(nodes_t.c.id == row.id).values(**values))

    def _fence(
        self, session: Session, row: Any, held: set[tuple[str, int]] | None, at: datetime,
        client_id: str | None,
    ) -> list[tuple[str, int]]:
        """Attempts the worker must stop, and running jobs the worker no longer holds."""
        if held is None:
            return []  # not told what the worker holds: nothing to conclude
        active = queries.active_jobs_on_node(session, row.id)
        current = {(j.name, j.attempt) for j in active}
        cancel = sorted(held - current)
        lost = [
            lost_attempt(j, Reason.NODE_RESTARTED, at, self.config,
                         f"node {row.name} no longer runs attempt {j.attempt}")
            for j in active
            if j.status is JobStatus.RUNNING and (j.name, j.attempt) not in held
        ]
        apply_job_transitions(session, lost, at, client_id)
        return cancel

    def _leave(
        self, session: Session, row: Any, held: set[tuple[str, int]] | None, at: datetime,
        client_id: str | None,
    ) -> bool:
        """A draining worker: hand back what it was given and did not start; gone when empty.

        True when something changed (a job went back to pending, or the node left).
        """
        if held is None:
            return False
        unstarted = [
            JobTransition(j.id, j.name, j.status, JobStatus.PENDING, str(Reason.RELEASED), j.attempt,
                          message=f"node {row.name} is draining", node_name=row.name)
            for j in queries.active_jobs_on_node(session, row.id)
            if j.status is JobStatus.ASSIGNED and (j.name, j.attempt) not in held
        ]
        apply_job_transitions(session, unstarted, at, client_id)
        if held:
            return bool(unstarted)
        apply_node_transitions(
            session,
            [NodeTransition(row.id, row.name, NodeStatus.READY, NodeStatus.DEAD, str(Reason.RELEASED))],
            at, client_id,
        )
        log.info("[FaultTolerance] Node %s drained and left", row.name)
        return True

    def _assignments(
        self, session: Session, node_id: int, held: set[tuple[str, int]] | None
    ) -> list[Assignment]:
        rows = _ASSIGNED_TO.rows(connection_of(session), node_id=node_id)
        pending = [r for r in rows if held is None or (r.name, r.attempt) not in held]
        if not pending:
            return []
        scenarios = queries.scenarios_by_name(session, sorted({r.scenario_name for r in pending}))
        out = []
        for r in pending:
            scenario = scenarios.get(r.scenario_name)
            try:
                if scenario is None:
                    raise LookupError(f"scenario {r.scenario_name!r} no longer exists")
                command = render_command(scenario.command, {**scenario.defaults, **r.parameters})
            except (LookupError, PlaceholderError) as exc:
                # Not handed out: the assign timeout sends the job back through the retry rule.
                log.warning("[FaultTolerance] Cannot hand out %s attempt %d: %s", r.name, r.attempt, exc)
                continue
            out.append(Assignment(r.name, r.attempt, command, r.active_deadline_seconds))
        return out

    def report(
        self,
        job: str,
        attempt: int,
        state: str,
        exit_code: int | None = None,
        message: str | None = None,
        log_tail: str | None = None,
        result: dict[str, Any] | None = None,
        reason: str | None = None,
        node: str | None = None,
        client_id: str | None = None,
        now: datetime | None = None,
        *,
        node_bound: bool = False,
    ) -> ReportResult:
        """Apply a worker's report for one attempt: fenced (StaleAttempt) and idempotent.

        `node`, when given, must be the node the attempt runs on. With `node_bound` (the
        caller is a worker token of `node`), an attempt that ran on another node raises
        `WrongNode` (403) before fencing is even considered.
        """
        work = self._report_work(job, attempt, state, exit_code, message, log_tail, result, reason,
                                 node, client_id, now, node_bound)
        return self._write(work, self._reported)

    def report_batched(
        self,
        job: str,
        attempt: int,
        state: str,
        exit_code: int | None = None,
        message: str | None = None,
        log_tail: str | None = None,
        result: dict[str, Any] | None = None,
        reason: str | None = None,
        node: str | None = None,
        client_id: str | None = None,
        *,
        node_bound: bool = False,
    ) -> Written[ReportResult] | None:
        """`report`, written together with other requests' writes (`controller.store.group`).

        The outcome holds what `report` returns or raises, once the write has committed.
        None when the writer is closed (shutting down): call `report` instead.
        """
        work = self._report_work(job, attempt, state, exit_code, message, log_tail, result, reason,
                                 node, client_id, None, node_bound)
        return self._write_batched(work, ("job", job), self._reported)

    def _report_work(
        self, job: str, attempt: int, state: str, exit_code: int | None, message: str | None,
        log_tail: str | None, result: dict[str, Any] | None, reason: str | None, node: str | None,
        client_id: str | None, now: datetime | None, node_bound: bool,
    ) -> Callable[[Session], _Reported]:
        """The report's writes, for one transaction; what follows the commit is `_reported`."""
        if state not in REPORT_STATES:
            raise InvalidRequest(f"state must be one of {', '.join(REPORT_STATES)}")
        at = self._now(now)

        def work(session: Session) -> _Reported:
            row = queries.job_with_node(session, job, lock=True)
            if row is None:
                raise NotFound(f"job {job!r} not found")
            node_name = row.node_name
            status = JobStatus(row.status)
            if node_bound:
                # The current active attempt runs on the job's node; older ones say in their history.
                if row.attempt == attempt and status in ACTIVE_JOB_STATUSES:
                    owner = node_name
                else:
                    history = queries.attempt_row(session, row.id, attempt)
                    owner = history.node_name if history is not None else None
                if owner is not None and owner != node:
                    raise WrongNode(f"attempt {attempt} of job {job!r} ran on node {owner!r}, "
                                    f"not {node!r}")
            current = (
                row.attempt == attempt
                and status in ACTIVE_JOB_STATUSES
                and (node is None or node_name == node)
            )
            if current:
                transitions = self._report_transitions(
                    session, row, node_name, state, exit_code, message, log_tail, result, reason, at
                )
                apply_job_transitions(session, transitions, at, client_id)
                first_start = any(t.to_status is JobStatus.RUNNING for t in transitions) and (
                    self.on_started is not None and not self._started_before(session, row)
                )
                final = transitions[-1].to_status if transitions else status
                outcome = ReportResult(job, attempt, str(final), applied=bool(transitions))
                freed = node_name if transitions and final not in ACTIVE_JOB_STATUSES else None
                return _Reported(outcome, None, (row.created_at, at) if first_start else None, freed)
            if self._duplicate(session, row, attempt, state):
                return _Reported(ReportResult(job, attempt, row.status, applied=False), None, None)
            stale = (f"attempt {attempt} of job {job!r} is not current "
                     f"(job is {row.status}, attempt {row.attempt}"
                     + (f", on node {node_name}" if node_name else "") + ")")
            write_audit(session, "job.stale_report", "job", job,
                        {"attempt": attempt, "currentAttempt": row.attempt,
                         "status": row.status, "state": state, "node": node,
                         "exitCode": exit_code}, at, client_id)
            return _Reported(ReportResult(job, attempt, row.status, applied=False), stale, None)

        return work

    def _reported(self, reported: _Reported) -> ReportResult:
        """After the report's transaction committed: refuse a stale one, tell who waits."""
        outcome = reported.outcome
        if reported.stale is not None:
            log.warning("[FaultTolerance] Refused stale report: %s", reported.stale)
            raise StaleAttempt(reported.stale)
        if reported.started is not None and self.on_started is not None:
            self.on_started(outcome.job, *reported.started)
        # Only a job back in the queue (a retry) is new work for the pass or another worker.
        if outcome.applied and outcome.status == str(JobStatus.PENDING):
            self._changed()
        # A finished job frees a slot of the reporting worker. Its heartbeat may be waiting
        # already, sent before this report landed and so still counting the job as held:
        # it is woken to look again, now that the slot is free.
        if reported.freed is not None and self.on_freed is not None:
            self.on_freed(reported.freed)
        return outcome

    @staticmethod
    def _started_before(session: Session, row: Any) -> bool:
        """True when an earlier attempt of the job already started running."""
        if row.attempt <= 1:  # the first attempt: there is no earlier one
            return False
        found = _STARTED_BEFORE.first(connection_of(session), job_id=row.id, attempt=row.attempt)
        return bool(found is not None and found[0])

    def _report_transitions(
        self, session: Session, row: Any, node_name: str | None, state: str,
        exit_code: int | None, message: str | None, log_tail: str | None,
        result: dict[str, Any] | None, reason: str | None, at: datetime,
    ) -> list[JobTransition]:
        status = JobStatus(row.status)

        def step(to: JobStatus, why: Reason | str, **extra: Any) -> JobTransition:
            return JobTransition(job_id=row.id, name=row.name, from_status=status, to_status=to,
                                 reason=str(why), attempt=row.attempt, node_name=node_name, **extra)

        if state == "released":
            return [step(JobStatus.PENDING, Reason.RELEASED,
                         message=message or "handed back by a draining worker")]
        out: list[JobTransition] = []
        if status is JobStatus.ASSIGNED and state in ("running", "completed"):
            # A job that also ends in this report never waits in `running`: no deadline.
            deadline = self._running_deadline(session, row, at) if state == "running" else None
            out.append(step(JobStatus.RUNNING, Reason.STARTED, timeout_at=deadline))
            status = JobStatus.RUNNING
        if state == "running":
            return out
        finish = {"exit_code": exit_code, "log_tail": log_tail, "result": result}
        if state == "completed":
            out.append(step(JobStatus.COMPLETED, Reason.SUCCEEDED, message=message, **finish))
            return out
        cause = Reason.EXIT_CODE
        if reason in (Reason.DEADLINE_EXCEEDED, Reason.INVALID_PARAMETERS):
            cause = Reason(reason)
        detail = message or (f"exit code {exit_code}" if exit_code is not None else None)
        fail_now = cause is Reason.INVALID_PARAMETERS or (
            cause is Reason.EXIT_CODE and exit_code is not None and exit_code in row.fail_on_exit_codes
        )
        if fail_now:
            out.append(step(JobStatus.FAILED, cause, message=detail, **finish))
            return out
        ft = self.config.fault_tolerance
        max_retries = row.max_retries if row.max_retries is not None else ft.max_retries
        decided = retry_or_fail(row.retry_count, max_retries, cause, at, ft, detail)
        out.append(step(decided.status, decided.reason, message=decided.message,
                        retry_count=decided.retry_count, not_before=decided.not_before, **finish))
        return out

    def _running_deadline(self, session: Session, row: Any, at: datetime) -> datetime | None:
        scenario = None
        if row.expected_duration_seconds is None:
            scenario = _SCENARIO_EXPECTED.first(connection_of(session), name=row.scenario_name)
        expected = expected_seconds(row.expected_duration_seconds,
                                    scenario.expected_duration_seconds if scenario else None)
        return running_timeout_at(at, expected, self.config.fault_tolerance)

    def _duplicate(self, session: Session, row: Any, attempt: int, state: str) -> bool:
        """True when this report was already applied (the attempt's history says so)."""
        history = queries.attempt_row(session, row.id, attempt)
        if history is None:
            return False
        if state == "running":
            # A late copy of a `running` report after the attempt completed is harmless.
            return bool(history.status in ("running", "completed"))
        if state == "completed":
            return bool(history.status == "completed")
        if state == "released":
            return bool(history.status == "requeued" and history.reason == str(Reason.RELEASED))
        return bool(
            (history.status == "failed"
            and history.reason in (str(Reason.EXIT_CODE), str(Reason.DEADLINE_EXCEEDED),
                                   str(Reason.INVALID_PARAMETERS), str(Reason.MAX_RETRIES_EXCEEDED)))
            or (history.status == "requeued"
            and history.reason in (str(Reason.EXIT_CODE), str(Reason.DEADLINE_EXCEEDED)))
        )

    # --- writing ------------------------------------------------------------------------------

    def _write(self, work: Callable[[Session], T], after: Callable[[T], R]) -> R:
        """`work` in a transaction of its own, then `after` once it has committed."""
        with self.store.write() as session:
            done = work(session)
        return after(done)

    def _write_batched(
        self, work: Callable[[Session], T], key: tuple[str, ...], after: Callable[[T], R],
    ) -> Written[R] | None:
        """`_write` through the group-commit writer; None when it is closed (shutting down).

        `after` runs in the writer thread once the batch has committed.
        """
        return self.writer.submit(work, key=key, then=after)

    # --- lookups --------------------------------------------------------------------------------

    def _job(self, session: Session, name: str) -> Any:
        row = queries.job_by_name(session, name, lock=True)
        if row is None:
            raise NotFound(f"job {name!r} not found")
        return row

    @staticmethod
    def _node_name(session: Session, node_id: int | None) -> str | None:
        if node_id is None:
            return None
        row = _NODE_NAME.first(connection_of(session), id=node_id)
        return row.name if row is not None else None


_STARTED_BEFORE = Prepared(lambda _: sa.select(sa.exists().where(
    attempts_t.c.job_id == sa.bindparam("job_id"), attempts_t.c.attempt != sa.bindparam("attempt"),
    attempts_t.c.started_at.is_not(None))))


_SCENARIO_EXPECTED = Prepared(lambda _: sa.select(scenarios_t.c.expected_duration_seconds)
                              .where(scenarios_t.c.name == sa.bindparam("name")))
_ASSIGNED_TO = Prepared(lambda _: (
    sa.select(jobs_t.c.name, jobs_t.c.attempt, jobs_t.c.scenario_name,
              jobs_t.c.parameters, jobs_t.c.active_deadline_seconds)
    .where(jobs_t.c.node_id == sa.bindparam("node_id"), jobs_t.c.status == str(JobStatus.ASSIGNED))
    .order_by(jobs_t.c.assigned_at, jobs_t.c.id)
))
_BEAT = Prepared(lambda _: (
    sa.update(nodes_t).where(nodes_t.c.id == sa.bindparam("id"))
    .values(last_heartbeat=sa.bindparam("at", type_=nodes_t.c.last_heartbeat.type))
))
_NODE_NAME = Prepared(lambda _: sa.select(nodes_t.c.name).where(nodes_t.c.id == sa.bindparam("id")))


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7396 JSON merge patch: mappings merge, null removes, anything else replaces."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def job_manifest_body(row: Any) -> dict[str, Any]:
    """The Job manifest (camelCase mapping) that a jobs row declares."""
    spec: dict[str, Any] = {
        "scenario": row.scenario_name,
        "parameters": dict(row.parameters),
        "priority": str(Priority.from_rank(row.priority)),
        "nodeSelector": dict(row.node_selector),
        "suspend": row.suspend,
        "retryPolicy": {"failOnExitCodes": list(row.fail_on_exit_codes)},
    }
    optional = {
        "maxRetries": row.max_retries,
        "expectedDurationSeconds": row.expected_duration_seconds,
        "activeDeadlineSeconds": row.active_deadline_seconds,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    return {
        "apiVersion": "ffrtmp.io/v1",
        "kind": "Job",
        "metadata": {"name": row.name, "labels": dict(row.labels)},
        "spec": spec,
    }


def delete_job_row(
    session: Session, row: Any, reason: Reason, at: datetime, client_id: str | None
) -> None:
    """Cancel (when not terminal) and delete one job; audited."""
    status = JobStatus(row.status)
    if not status.terminal:
        apply_job_transitions(
            session,
            [JobTransition(row.id, row.name, status, JobStatus.CANCELLED, str(reason), row.attempt,
                           message=f"{reason}: the job is being deleted")],
            at, client_id,
        )
    session.execute(sa.delete(jobs_t).where(jobs_t.c.id == row.id))
    write_audit(session, "job.deleted", "job", row.name,
                {"status": str(JobStatus.CANCELLED if not status.terminal else status),
                 "reason": str(reason)}, at, client_id)


def delete_node_row(
    session: Session, row: Any, at: datetime, config: ControllerConfig, client_id: str | None
) -> None:
    """Requeue a node's active jobs as if it died, then delete it; audited."""
    lost = [
        lost_attempt(j, Reason.NODE_LOST, at, config, f"node {row.name} was removed")
        for j in queries.active_jobs_on_node(session, row.id)
    ]
    apply_job_transitions(session, lost, at, client_id)
    session.execute(sa.delete(nodes_t).where(nodes_t.c.id == row.id))
    write_audit(session, "node.deleted", "node", row.name, {"status": row.status}, at, client_id)
