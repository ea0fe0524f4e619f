"""The one door: every job and node status change passes through here.

A transition is checked against the state machine, written with a guard on the
status and attempt the caller observed (so a concurrent change makes the whole
transaction fail instead of silently overwriting it), reflected in the attempt
history, and audited, all inside the caller's transaction. Nothing else in the
code base assigns a status.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import lru_cache
from operator import attrgetter
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import Session

from controller.domain.states import (
    ACTIVE_JOB_STATUSES,
    JobStatus,
    NodeStatus,
    Reason,
    check_job_transition,
    check_node_transition,
)
from controller.store.audit import write_audit_many, write_audit_rows
from controller.store.bulk import Converter, converter, insert_rows, update_rows
from controller.store.models import Job, JobAttempt, Node
from controller.store.prepared import connection_of

jobs_t: sa.Table = Job.__table__  # type: ignore[attr-defined]
attempts_t: sa.Table = JobAttempt.__table__  # type: ignore[attr-defined]
nodes_t: sa.Table = Node.__table__  # type: ignore[attr-defined]


class ConcurrentChange(RuntimeError):
    """A row was changed by someone else between being read and being written."""


class JobTransition(NamedTuple):
    """One job status change, with the values it observed (for the guard) and sets.

    A named tuple rather than a frozen dataclass: a pass builds tens of thousands, and
    a frozen dataclass takes about four times as long to construct.
    """

    job_id: int
    name: str
    from_status: JobStatus
    to_status: JobStatus
    reason: str
    attempt: int
    """The attempt the caller saw; the row must still carry it. `-> assigned` makes it +1."""
    message: str | None = None
    node_id: int | None = None
    """For `-> assigned`: the node the job is bound to."""
    node_name: str | None = None
    """The node the transition concerns, for the audit row and the attempt history."""
    retry_count: int | None = None
    """New retry count, when it changes."""
    not_before: datetime | None = None
    timeout_at: datetime | None = None
    exit_code: int | None = None
    log_tail: str | None = None
    result: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NodeTransition:
    """One node status change."""

    node_id: int
    name: str
    from_status: NodeStatus
    to_status: NodeStatus
    reason: str


# The columns each kind of transition sets on the job's row, in the order of the values
# `_job_update` gives them. Every way into pending clears started_at and finished_at,
# so a job going to assigned has them empty already.
_SETS = ("status", "reason", "message", "updated_at")
_SET_ASSIGNED = (*_SETS, "node_id", "attempt", "assigned_at", "timeout_at", "not_before")
_SET_RUNNING = (*_SETS, "started_at", "timeout_at")
_SET_PENDING = (*_SETS, "node_id", "not_before", "timeout_at", "assigned_at", "started_at", "finished_at")
_SET_FINISHED = (*_SETS, "finished_at", "timeout_at", "not_before")
_RETRY_COUNT = ("retry_count",)


def _job_update(t: JobTransition, when: Any, convert: Converter) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The columns a transition sets on its job's row, and their driver values.

    `when` is the transaction's time already converted for the driver. Built as tuples
    of a few fixed shapes: a pass writes 10,000 of them.
    """
    to = t.to_status
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    if to is JobStatus.ASSIGNED:
        columns = _SET_ASSIGNED
        values = (str(to), t.reason, t.message, when, t.node_id, t.attempt + 1, when,
                  convert.value(t.timeout_at), None)
    elif to is JobStatus.RUNNING:
        columns = _SET_RUNNING
        values = (str(to), t.reason, t.message, when, when, convert.value(t.timeout_at))
    elif to is JobStatus.PENDING:
        columns = _SET_PENDING
        values = (str(to), t.reason, t.message, when,
                  None, convert.value(t.not_before), None, None, None, None)
        if t.from_status.terminal:  # a manual retry starts counting again
            return columns + _RETRY_COUNT, (*values, 0)
    else:  # completed, failed, cancelled
        columns = _SET_FINISHED
        values = (str(to), t.reason, t.message, when, when, None, None)
    if t.retry_count is not None:
        return columns + _RETRY_COUNT, (*values, t.retry_count)
    return columns, values


def _attempt_values(t: JobTransition, now: datetime) -> dict[str, Any] | None:
    """How the current attempt's history row changes (None: the job had no attempt running)."""
    if t.from_status not in ACTIVE_JOB_STATUSES:
        return None
    if t.to_status is JobStatus.RUNNING:
        return {"status": "running", "started_at": now}
    outcome = "requeued" if t.to_status is JobStatus.PENDING else str(t.to_status)
    return {
        "status": outcome,
        "reason": t.reason,
        "message": t.message,
        "finished_at": now,
        "exit_code": t.exit_code,
        "log_tail": t.log_tail,
        "result": t.result,
    }


def _update_guarded(
    session: Session,
    table: sa.Table,
    where: tuple[str, ...],
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    what: str,
) -> None:
    """Run an UPDATE for every row and insist that each matched exactly one row."""
    if connection_of(session).dialect.supports_sane_multi_rowcount:
        changed = update_rows(session, table, where, columns, rows)
        if changed != len(rows):
            raise ConcurrentChange(f"{what}: {len(rows) - changed} rows changed concurrently")
        return
    for one in rows:
        if update_rows(session, table, where, columns, [one]) != 1:
            raise ConcurrentChange(f"{what}: row changed concurrently ({one})")


_JOB_GUARDS = ("id", "status", "attempt")
_job_id = attrgetter("job_id")
_ATTEMPT_KEY = ("job_id", "attempt")


def apply_job_transitions(
    session: Session,
    transitions: Sequence[JobTransition],
    now: datetime,
    client_id: str | None = None,
) -> None:
    """Write job transitions, their attempt history and their audit rows in the caller's transaction."""
    if not transitions:
        return
    for pair in {(t.from_status, t.to_status) for t in transitions}:
        check_job_transition(*pair)
    convert = converter(session)

    # One batch per shape (the columns a transition sets), each row guarded on the status
    # and attempt its caller observed. Rows go in id order (a stable sort: two changes of
    # one job keep theirs), so the table and its indexes are walked forward: on a table
    # of 1M jobs, 10,000 updates in random order took SQLite 0.8 s, in id order 0.5 s.
    by_id = sorted(transitions, key=_job_id)
    when = convert.value(now)
    chains = _chains(by_id)
    job_rows: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for chain in chains:
        first = chain[0]
        if len(chain) == 1:
            columns, values = _job_update(first, when, convert)
        else:  # the row as the steps in turn would leave it, in one UPDATE
            merged: dict[str, Any] = {}
            for t in chain:
                merged.update(zip(*_job_update(t, when, convert), strict=True))
            columns, values = tuple(merged), tuple(merged.values())
        job_rows[columns].append((*values, first.job_id, str(first.from_status), first.attempt))
    for columns, rows in job_rows.items():
        _update_guarded(session, jobs_t, _JOB_GUARDS, columns, rows, "job transition")

    new_attempts = [
        (t.job_id, t.attempt + 1, t.node_name or "", "assigned", when)
        for t in by_id
        if t.to_status is JobStatus.ASSIGNED
    ]
    insert_rows(session, attempts_t, ("job_id", "attempt", "node_name", "status", "assigned_at"),
                new_attempts)

    attempt_rows: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for chain in chains:
        first = chain[0]
        history = _attempt_values(first, now)
        if history is None:
            continue
        for t in chain[1:]:
            history.update(_attempt_values(t, now) or {})
        attempt_rows[tuple(history)].append((*convert.row(history.values()), first.job_id, first.attempt))
    for columns, rows in attempt_rows.items():
        # Unguarded: history is a record, and a missing row must never block a requeue.
        update_rows(session, attempts_t, _ATTEMPT_KEY, columns, rows)

    # Audit rows straight as driver values: 10,000 of them per scheduling pass. SQLite stores
    # JSON as text: the details are written as text directly (`_job_details_text`).
    if convert.json_is_text:
        details = [_job_details_text(t) for t in transitions]
    else:
        details = [convert.value(_job_details(t)) for t in transitions]
    write_audit_rows(session, [
        ("job.transition", "job", t.name, client_id, text, when)
        for t, text in zip(transitions, details, strict=True)
    ])


def _chains(by_id: Sequence[JobTransition]) -> list[list[JobTransition]]:
    """The transitions in runs of one job's steps, each from where the last left it.

    A report can take a job through two steps at once (`assigned -> running ->
    completed` when the job ended before its `running` report went out): both are
    checked and audited, but the job's row and its attempt's history are written once,
    guarded on where the first step found them. A step to `assigned` starts a new
    attempt: it is never part of a run.
    """
    chains: list[list[JobTransition]] = []
    last: JobTransition | None = None
    for t in by_id:
        if (last is not None and t.job_id == last.job_id and t.from_status is last.to_status
                and t.attempt == last.attempt and JobStatus.ASSIGNED not in (last.to_status, t.to_status)):
            chains[-1].append(t)
        else:
            chains.append([t])
        last = t
    return chains


@lru_cache(maxsize=64)
def _isoformat(when: datetime, zone: tzinfo | None) -> str:
    # A batch of requeues shares one retry time, and formatting an aware time is not cheap.
    # The zone is part of the key: equal instants in two zones are written differently.
    return when.isoformat()


def _job_details(t: JobTransition) -> dict[str, Any]:
    """The `details` of a job's transition audit row."""
    attempt = t.attempt + 1 if t.to_status is JobStatus.ASSIGNED else t.attempt
    details: dict[str, Any] = {
        "from": str(t.from_status),
        "to": str(t.to_status),
        "reason": t.reason,
        "attempt": attempt,
        "node": t.node_name,
    }
    if t.retry_count is not None:
        details["retryCount"] = t.retry_count
    if t.message:
        details["message"] = t.message
    if t.exit_code is not None:
        details["exitCode"] = t.exit_code
    if t.not_before is not None:
        details["notBefore"] = _isoformat(t.not_before, t.not_before.tzinfo)
    return details


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _job_details_text(t: JobTransition) -> str:
    """`_job_details(t)` as `json.dumps` writes it, built directly as text.

    Twice as fast as building the dict and encoding it, on the 10,000 audit rows of a
    scheduling pass. The same keys, in the same order, as `_job_details` (a test holds
    the two to the same output).
    """
    attempt = t.attempt + 1 if t.to_status is JobStatus.ASSIGNED else t.attempt
    node = "null" if t.node_name is None else _quote(t.node_name)
    text = (f'{{"from": {_quote(str(t.from_status))}, "to": {_quote(str(t.to_status))}, '
            f'"reason": {_quote(t.reason)}, "attempt": {int(attempt)}, "node": {node}')
    if t.retry_count is not None:
        text += f', "retryCount": {int(t.retry_count)}'
    if t.message:
        text += f', "message": {_quote(t.message)}'
    if t.exit_code is not None:
        text += f', "exitCode": {int(t.exit_code)}'
    if t.not_before is not None:
        text += f', "notBefore": {_quote(_isoformat(t.not_before, t.not_before.tzinfo))}'
    return text + "}"


def apply_node_transitions(
    session: Session,
    transitions: Sequence[NodeTransition],
    now: datetime,
    client_id: str | None = None,
) -> None:
    """Write node status changes and their audit rows in the caller's transaction."""
    if not transitions:
        return
    for t in transitions:
        check_node_transition(t.from_status, t.to_status)
    when = converter(session).value(now)
    rows = [(str(t.to_status), when, when, t.node_id, str(t.from_status)) for t in transitions]
    _update_guarded(session, nodes_t, ("id", "status"), ("status", "status_changed_at", "updated_at"),
                    rows, "node transition")
    write_audit_many(
        session,
        [
            {
                "event_type": "node.transition",
                "entity_type": "node",
                "entity_id": t.name,
                "client_id": client_id,
                "details": {"from": str(t.from_status), "to": str(t.to_status), "reason": t.reason},
                "created_at": now,
            }
            for t in transitions
        ],
    )


__all__ = [
    "ConcurrentChange",
    "JobTransition",
    "NodeTransition",
    "Reason",
    "apply_job_transitions",
    "apply_node_transitions",
]
