"""Audit rows: written inside the caller's transaction, never on their own."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from controller.store.bulk import insert_many, insert_rows
from controller.store.models import AuditLog

_audit: sa.Table = AuditLog.__table__  # type: ignore[attr-defined]


def write_audit(
    session: Session,
    event_type: str,
    entity_type: str,
    entity_id: str,
    details: dict[str, Any],
    now: datetime,
    client_id: str | None = None,
) -> None:
    """Add one audit row to the caller's transaction."""
    session.execute(
        sa.insert(_audit).values(
            event_type=event_type,
            entity_type=entity_type,
            entity_id=entity_id,
            client_id=client_id,
            details=details,
            created_at=now,
        )
    )


def write_audit_many(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Add many audit rows (dicts with AuditLog's columns) in one statement."""
    insert_many(session, _audit, rows)


AUDIT_COLUMNS = ("event_type", "entity_type", "entity_id", "client_id", "details", "created_at")


def write_audit_rows(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Add many audit rows given as driver values in `AUDIT_COLUMNS` order (see `bulk.Converter`)."""
    insert_rows(session, _audit, AUDIT_COLUMNS, rows)
