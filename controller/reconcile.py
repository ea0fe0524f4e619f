"""The reconcile pass: read what is, decide with the pure policy, apply through the one door.

`Reconciler.reconcile(now)` runs the steps of SPEC section 5 in order, each in its
own transaction. It is level-triggered: every step looks at the whole current
state, so a missed event, a crash between steps or a restart changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlmodel import Session

from controller.config import ControllerConfig
from controller.domain.policy import (
    NodeBeat,
    assigned_timeout_at,
    decide_liveness,
    retry_or_fail,
)
from controller.domain.queue import FreeNode, Placement, Requirements, merge_classes, requirements
from controller.domain.states import JobStatus, NodeStatus, Reason
from controller.manifests.schema import placeholders
from controller.store import passes, queries
from controller.store.audit import write_audit
from controller.store.engine import Store
from controller.store.prepared import connection_of
from controller.store.tokens import delete_expired_tokens
from controller.store.transitions import (
    JobTransition,
    NodeTransition,
    apply_job_transitions,
    apply_node_transitions,
)

log = logging.getLogger("controller.reconcile")

_WAITING_REASONS = frozenset(
    {str(Reason.SCENARIO_NOT_FOUND), str(Reason.NO_MATCHING_NODE), str(Reason.INVALID_PARAMETERS)}
)


@dataclass
class PassResult:
    """What one pass did (names), for logs, metrics and tests."""

    dead_nodes: list[str] = field(default_factory=list)
    held_back_nodes: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    scheduled: list[tuple[str, str]] = field(default_factory=list)
    expired_tokens: int = 0
    seconds: float = 0.0


class Binding(NamedTuple):
    """A job bound to a node by the scheduler."""

    job: str
    node: str
    attempt: int
    created_at: datetime


def lost_attempt(
    job: queries.ActiveJob, cause: Reason, now: datetime, config: ControllerConfig,
    detail: str | None = None,
) -> JobTransition:
    """The retry rule applied to an attempt that was lost (dead node, stall, timeout, report).

    Logs the seed's line for the outcome; the caller applies the transition.
    """
    max_retries = job.max_retries if job.max_retries is not None else config.fault_tolerance.max_retries
    outcome = retry_or_fail(job.retry_count, max_retries, cause, now, config.fault_tolerance, detail)
    if outcome.status is JobStatus.PENDING:
        # The seed's line, exactly; the cause is in the audit row and the job's reason.
        log.info("[FaultTolerance] Reassigned job %s (retry %d/%d)",
                 job.name, outcome.retry_count, max_retries)
    else:
        log.warning("[FaultTolerance] Failed job %s: max retries exceeded", job.name)
    return JobTransition(
        job_id=job.id,
        name=job.name,
        from_status=job.status,
        to_status=outcome.status,
        reason=str(outcome.reason),
        attempt=job.attempt,
        message=outcome.message,
        node_name=job.node_name,
        retry_count=outcome.retry_count,
        not_before=outcome.not_before,
    )


def _count_outcomes(transitions: list[JobTransition], result: PassResult) -> None:
    for t in transitions:
        (result.requeued if t.to_status is JobStatus.PENDING else result.failed).append(t.name)


@dataclass
class _Rules:
    """What a pending job needs of a node, from its scenario; per-scenario facts computed once."""

    scenarios: dict[str, queries.ScenarioInfo]
    undefaulted: dict[str, set[str]] = field(default_factory=dict)
    """Per scenario: its placeholders that have no default."""
    required: dict[str, Requirements | None] = field(default_factory=dict)
    """Per scenario: the labels a job without nodeSelector needs."""

    def needs(self, job: queries.PendingJob) -> tuple[Requirements | None, tuple[Reason, str] | None]:
        """The labels the job needs (None: contradictory), or why it cannot run at all."""
        scenario = self.scenarios.get(job.scenario_name)
        if scenario is None:
            return None, (Reason.SCENARIO_NOT_FOUND, f"scenario {job.scenario_name!r} does not exist")
        unset = self.undefaulted.get(scenario.name)
        if unset is None:
            unset = placeholders(scenario.command) - set(scenario.defaults)
            self.undefaulted[scenario.name] = unset
        missing = unset - job.parameters.keys() if unset else unset
        if missing:
            return None, (Reason.INVALID_PARAMETERS,
                          "no value for placeholder(s) " + ", ".join(sorted(missing)))
        if job.node_selector:
            return requirements(job.node_selector, scenario.requires), None
        if scenario.name not in self.required:
            self.required[scenario.name] = requirements({}, scenario.requires)
        return self.required[scenario.name], None


def schedule(
    session: Session, now: datetime, config: ControllerConfig, only_node: int | None = None
) -> list[Binding]:
    """Bind eligible pending jobs, in queue order, to ready nodes with free slots.

    With `only_node`, only that node is filled (the heartbeat path); the rules are
    the same. A job that fits no node is skipped and never blocks the ones behind it.
    """
    classes = queries.pending_priorities(session)
    if not classes:
        return []
    # The pass skips nodes whose heartbeat holds them (that heartbeat fills them itself);
    # then it saw part of the farm only, and must not conclude that no node matches a job.
    nodes = passes.schedulable_nodes(session, only=only_node, lock=True, skip_locked=only_node is None)
    if not nodes:
        return []
    whole = only_node is None and (
        connection_of(session).dialect.name != "postgresql"
        or len(nodes) == queries.count_schedulable_nodes(session)
    )
    counts = queries.active_counts(session, [n.id for n in nodes] if only_node is not None else None)
    placement = Placement.of(
        FreeNode(n.name, max(n.slots - counts.get(n.id, 0), 0), n.labels) for n in nodes
    )
    if placement.remaining == 0:
        return []
    node_ids = {n.name: n.id for n in nodes}
    rules = _Rules(queries.scenarios_by_name(session))
    # The heartbeat path fills one node: lock (SKIP LOCKED) a few candidates at a time, not
    # a batch of hundreds that the other replicas would then have to skip over.
    batch = max(4 * placement.remaining, 16) if only_node is not None else 500
    # Only the classes that hold pending jobs: an empty class would cost a query (and, on
    # the heartbeat path, most of its statements) for nothing.
    runs = {p: passes.eligible_run(session, p, now, batch=batch, lock=True) for p in classes}
    bindings: list[Binding] = []
    transitions: list[JobTransition] = []
    reasons: list[tuple[int, str | None, str | None]] = []
    assign_deadline = assigned_timeout_at(now, config.fault_tolerance)

    def waiting(job: queries.PendingJob, reason: Reason | None, message: str | None) -> None:
        # Only a pass over every node knows that no node at all matches; a heartbeat sees one.
        wanted = str(reason) if reason else None
        if reason is Reason.NO_MATCHING_NODE and not whole:
            return
        if only_node is None and wanted != job.reason and (wanted or job.reason in _WAITING_REASONS):
            reasons.append((job.id, wanted, message))

    for job in merge_classes(runs, now, config.queue):
        if placement.remaining == 0:
            break
        needs, refusal = rules.needs(job)
        if refusal is not None:
            waiting(job, *refusal)
            continue
        if needs is None or not placement.any_match(needs):
            waiting(job, Reason.NO_MATCHING_NODE, "no ready node matches nodeSelector and requires")
            continue
        node = placement.place(needs)
        if node is None:
            waiting(job, None, None)
            continue
        transitions.append(
            JobTransition(
                job_id=job.id,
                name=job.name,
                from_status=JobStatus.PENDING,
                to_status=JobStatus.ASSIGNED,
                reason=str(Reason.SCHEDULED),
                attempt=job.attempt,
                node_id=node_ids[node],
                node_name=node,
                timeout_at=assign_deadline,
            )
        )
        bindings.append(Binding(job.name, node, job.attempt + 1, job.created_at))
    for run in runs.values():
        run.close()
    queries.set_job_reasons(session, reasons, now)
    apply_job_transitions(session, transitions, now)
    return bindings


class Reconciler:
    """Runs reconcile passes over a store; keeps only the mass-failure episode in memory."""

    def __init__(
        self,
        store: Store,
        config: ControllerConfig,
        started_at: datetime,
        desired_state: Callable[[datetime], object] | None = None,
        on_pass: Callable[[PassResult], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.started_at = started_at
        self.desired_state = desired_state
        self.on_pass = on_pass
        self.episode_started_at: datetime | None = None

    def lead_from(self, now: datetime) -> None:
        """This replica became the leader at `now`: the start-time grace restarts from there.

        Heartbeats sent during the failover may have gone unanswered (or to no one), so
        no node is declared dead for them; the mass-failure episode of an earlier
        leadership is forgotten.
        """
        self.started_at = now
        self.episode_started_at = None

    def reconcile(self, now: datetime) -> PassResult:
        """One pass at `now`: desired state, liveness, lost jobs, timeouts, scheduling, housekeeping."""
        began = time.perf_counter()
        result = PassResult()
        if self.desired_state is not None:
            self.desired_state(now)
        self.check_liveness(now, result)
        self.requeue_lost(now, result)
        self.check_timeouts(now, result)
        self.schedule(now, result)
        self.housekeeping(now, result)
        result.seconds = time.perf_counter() - began
        if self.on_pass is not None:
            self.on_pass(result)
        return result

    def check_liveness(self, now: datetime, result: PassResult) -> None:
        """Declare overdue ready nodes dead, unless the mass-failure guard holds them back."""
        ft = self.config.fault_tolerance
        cutoff = now - timedelta(seconds=ft.node_timeout_seconds)
        if self.started_at >= cutoff:
            # Within the start-time grace no node can be overdue: nothing to read.
            self.episode_started_at = None
            return
        with self.store.write() as session:
            silent = queries.silent_ready_nodes(session, cutoff)
            ready_count = queries.count_ready_nodes(session) if silent else 0
            ids = {name: node_id for node_id, name, _ in silent}
            decision = decide_liveness(
                [NodeBeat(name, beat) for _, name, beat in silent],
                now, self.started_at, ft, self.episode_started_at, ready_count,
            )
            if decision.episode_began:
                write_audit(
                    session, "controller.mass_failure_suspected", "controller", "controller",
                    {"overdue": list(decision.held_back), "ready": ready_count,
                     "threshold": ft.mass_failure_threshold,
                     "holdSeconds": ft.mass_failure_hold_seconds},
                    now,
                )
            apply_node_transitions(
                session,
                [NodeTransition(ids[n], n, NodeStatus.READY, NodeStatus.DEAD,
                                str(Reason.HEARTBEAT_TIMEOUT)) for n in decision.dead],
                now,
            )
        if decision.episode_began:
            log.warning(
                "[FaultTolerance] Mass failure suspected: %d of %d ready nodes missed heartbeats; "
                "holding deaths back for %gs", len(decision.held_back), ready_count,
                ft.mass_failure_hold_seconds,
            )
        self.episode_started_at = decision.episode_started_at
        for name in decision.dead:
            log.warning("[FaultTolerance] Detected dead node: %s (%s)", name, ids[name])
        result.dead_nodes.extend(decision.dead)
        result.held_back_nodes.extend(decision.held_back)

    def requeue_lost(self, now: datetime, result: PassResult) -> None:
        """Jobs assigned to or running on dead (or removed) nodes: retry or fail."""
        with self.store.write() as session:
            transitions = [
                lost_attempt(job, Reason.NODE_LOST, now, self.config,
                             f"node {job.node_name} is dead" if job.node_name else "node removed")
                for job in queries.jobs_on_lost_nodes(session)
            ]
            apply_job_transitions(session, transitions, now)
        _count_outcomes(transitions, result)

    def check_timeouts(self, now: datetime, result: PassResult) -> None:
        """Running jobs past their stall limit and assigned jobs never started: retry or fail."""
        # The assign timeout gets the start-time grace too: a worker's `running` report
        # sent while this controller was down (or not yet leading) could not be received.
        assign_grace = (now - self.started_at).total_seconds() <= self.config.fault_tolerance.assign_timeout
        with self.store.write() as session:
            transitions = []
            for job in queries.timed_out_jobs(session, now):
                if job.status is JobStatus.RUNNING:
                    transitions.append(lost_attempt(job, Reason.STALLED, now, self.config,
                                                    "running longer than its stall limit"))
                elif not assign_grace:
                    transitions.append(lost_attempt(job, Reason.ASSIGN_TIMEOUT, now, self.config,
                                                    "not started by its node in time"))
            apply_job_transitions(session, transitions, now)
        _count_outcomes(transitions, result)

    def schedule(self, now: datetime, result: PassResult) -> list[Binding]:
        """Bind eligible pending jobs to free slots."""
        # Every node id bound comes from a row read in this transaction: see Store.write.
        with self.store.write(check_references=False) as session:
            bindings = schedule(session, now, self.config)
        result.scheduled.extend((b.job, b.node) for b in bindings)
        return bindings

    def housekeeping(self, now: datetime, result: PassResult) -> None:
        """Delete expired tokens."""
        with self.store.write() as session:
            result.expired_tokens = delete_expired_tokens(session, now)
        if result.expired_tokens:
            log.info("[Auth] Cleaned up %d expired tokens", result.expired_tokens)
