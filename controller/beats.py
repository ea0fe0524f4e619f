"""Idle heartbeats written in shared transactions (group commit).

Most heartbeats come from idle workers and only move `last_heartbeat` forward. The
API hands such a beat to the farm's writer (`controller.store.group`), which records
it together with whatever else arrived meanwhile, in one transaction and one commit.
A beat is acknowledged only after its transaction commits.

On SQLite the idle beats of one batch are written by one statement
(`hotpath.idle_beats`, through `GroupCommit.submit_together`).

A beat the writer cannot settle (the node is unknown, not ready, changed its labels
or slots, holds jobs, or could be given work now; or the write failed) is answered
False, and the caller runs the full heartbeat for it (`Farm.heartbeat`): the rules
are in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from controller.store import hotpath
from controller.store.group import GroupCommit, Written


class BeatBatcher:
    """Hands idle heartbeats to a `GroupCommit` writer."""

    def __init__(self, writer: GroupCommit, clock: Callable[[], datetime]) -> None:
        self.writer = writer
        self.clock = clock
        # SQLite: the beats of a batch in one statement (`hotpath.idle_beats`). PostgreSQL:
        # one unit each, in node order with the batch's other writes, so that replicas
        # writing the same nodes take their row locks in the same order.
        self.together = writer.store.dialect == "sqlite"

    def submit(
        self, name: str, slots: int | None, labels: Mapping[str, str] | None
    ) -> Written[bool]:
        """Queue the beat of an idle worker; the outcome is True once it is recorded.

        False: nothing was settled for this beat; the caller runs the full heartbeat.
        """
        at = self.clock()
        written: Written[bool] | None
        if self.together:
            beat = hotpath.IdleBeat(name, at, slots, labels)
            written = self.writer.submit_together(hotpath.idle_beats, beat, key=("node", name),
                                                  rescue=_not_settled)
        else:
            written = self.writer.submit(
                lambda session: hotpath.idle_beat(session, name, at, slots, labels), key=("node", name),
                savepoint=False,  # it fails only when the database does
                rescue=_not_settled,
            )
        return written if written is not None else Written.of(False)


def _not_settled(_: Exception) -> bool:
    return False
