"""The idle heartbeat's statements (the API's most frequent request), prepared once.

An idle worker's beat is most of the controller's traffic: 1,000 workers beating
every few seconds. It needs two statements, prepared once (`controller.store.prepared`):
one moves `last_heartbeat` and returns what decides whether anything else is due, one
probes two indexes (does the node hold jobs, does any job wait).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import Session

from controller.domain.states import NodeStatus
from controller.store.prepared import Prepared, connection_of
from controller.store.queries import IS_ACTIVE, IS_PENDING
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
    if row is None:
        return False  # unknown (registers) or not ready (revives): the full path
    if row.draining:
        return False  # it drained before and beats normally again: the full path clears the flag
    if labels is not None and dict(labels) != row.reported_labels:
        return False
    if slots is not None and not row.declared and slots != row.slots:
        return False
    active, pending = _WORK.first(connection, node_id=row.id)
    return not active and (not pending or row.unschedulable)
