"""The idle heartbeat's statements (the API's most frequent request), prepared once.

An idle worker's beat is most of the controller's traffic: 1,000 workers beating
every few seconds. It needs two statements, prepared once (`controller.store.prepared`):
one moves `last_heartbeat` and returns what decides whether anything else is due, one
probes two indexes (does the node hold jobs, does any job wait).

On SQLite the beats of one writer batch are written together (`idle_beats`): one
`UPDATE ... FROM json_each(?)` for all of them and one probe of the nodes that
answered, where one beat each cost two statements. Each statement lets go of the
interpreter while SQLite runs it and waits to take it back from the event loop, and
that hand-over, paid per statement, cost more than the statements themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import Session

from controller.domain.states import NodeStatus
from controller.store.bulk import Converter
from controller.store.prepared import Prepared, connection_of
from controller.store.queries import IS_ACTIVE, IS_PENDING, any_pending
from controller.store.transitions import jobs_t, nodes_t


def _beat_statement() -> ClauseElement:
    """Record the beat of a ready node; answer what decides whether anything else is due."""
    return (
        sa.update(nodes_t)
        .where(nodes_t.c.name == sa.bindparam("name"),
               sa.text(f"nodes.status = '{NodeStatus.READY}'"))
        .values(last_heartbeat=sa.bindparam("at", type_=nodes_t.c.last_heartbeat.type))
        .returning(nodes_t.c.id, nodes_t.c.slots, nodes_t.c.declared,
                   nodes_t.c.reported_labels, nodes_t.c.unschedulable, nodes_t.c.draining)
    )


def _work_statement() -> ClauseElement:
    """Whether the node holds active jobs, and whether any job waits (two index probes)."""
    active = sa.select(jobs_t.c.id).where(jobs_t.c.node_id == sa.bindparam("node_id"), IS_ACTIVE)
    pending = sa.select(jobs_t.c.id).where(IS_PENDING)
    return sa.select(sa.exists(active).label("active"), sa.exists(pending).label("pending"))


_BEAT = Prepared(lambda _: _beat_statement())
_WORK = Prepared(lambda _: _work_statement())


def idle_beat(
    session: Session, name: str, at: datetime, slots: int | None, labels: Mapping[str, str] | None
) -> bool:
    """Record the heartbeat of an idle worker when nothing else is due; True when it was.

    "Nothing else" means: the node is known, ready and not marked draining, the beat changes neither its
    labels nor (for a self-registered node) its slots, no job is assigned to or running
    on it, and it can take no work now (no job is pending, or the node is cordoned).
    False leaves the caller to do the full heartbeat in the same transaction (the
    beat may already be recorded: recording it again is harmless).
    """
    connection = connection_of(session)
    row = _BEAT.first(connection, name=name, at=at)
    if row is None or not _as_it_was(row, slots, labels):
        return False
    active, pending = _WORK.first(connection, node_id=row.id)
    return not active and (not pending or row.unschedulable)


def _as_it_was(row: Any, slots: int | None, labels: Mapping[str, str] | None) -> bool:
    """The beat of a recorded ready node (`row` of `_BEAT`/`_BEATS`) changes nothing of it.

    A node that drained before and beats normally again goes to the full path, which
    clears the flag; so do changed labels, and changed slots of a self-registered node.
    (A missing row: unknown, it registers; not ready, it revives: the full path too.)
    """
    if row.draining:
        return False
    if labels is not None and dict(labels) != row.reported_labels:
        return False
    return slots is None or row.declared or slots == row.slots


class IdleBeat(NamedTuple):
    """One idle heartbeat, as `idle_beat` takes it."""

    name: str
    at: datetime
    slots: int | None
    labels: Mapping[str, str] | None


def _beats_statement() -> ClauseElement:
    """SQLite: record the beats of ready nodes (`[[name, at], ...]`); answer as `_BEAT` does."""
    return sa.text(
        "UPDATE nodes SET last_heartbeat = beat.at"
        " FROM (SELECT json_extract(value, '$[0]') AS name, max(json_extract(value, '$[1]')) AS at"
        "       FROM json_each(:beats) GROUP BY 1) AS beat"
        f" WHERE nodes.name = beat.name AND nodes.status = '{NodeStatus.READY}'"
        " RETURNING nodes.id, nodes.name, nodes.slots, nodes.declared, nodes.reported_labels,"
        " nodes.unschedulable, nodes.draining"
    ).columns(nodes_t.c.id, nodes_t.c.name, nodes_t.c.slots, nodes_t.c.declared, nodes_t.c.reported_labels,
              nodes_t.c.unschedulable, nodes_t.c.draining)


def _busy_statement() -> ClauseElement:
    """The nodes among `:ids` (a JSON list) that hold assigned or running jobs."""
    each = sa.func.json_each(sa.bindparam("ids", type_=sa.String)).table_valued("value")
    return (sa.select(jobs_t.c.node_id).distinct()
            .where(IS_ACTIVE, jobs_t.c.node_id.in_(sa.select(each.c.value))))


_BEATS = Prepared(lambda _: _beats_statement())
_BUSY = Prepared(lambda _: _busy_statement())


def idle_beats(session: Session, beats: list[IdleBeat]) -> list[bool]:
    """`idle_beat` for each of `beats` (SQLite), in three statements at most for all of them."""
    connection = connection_of(session)
    as_stored = Converter("sqlite").value  # times as the JSON text of SQLite's rows holds them
    payload = json.dumps([[b.name, as_stored(b.at)] for b in beats])
    rows = {row.name: row for row in _BEATS.rows(connection, beats=payload)}
    if not rows:
        return [False] * len(beats)
    busy = {node_id for (node_id,) in _BUSY.tuples(connection, ids=json.dumps([r.id for r in rows.values()]))}
    pending: bool | None = None
    settled = []
    for beat in beats:
        row = rows.get(beat.name)
        if row is None or row.id in busy or not _as_it_was(row, beat.slots, beat.labels):
            settled.append(False)
            continue
        if not row.unschedulable and pending is None:
            pending = any_pending(session)
        settled.append(row.unschedulable or not pending)
    return settled
