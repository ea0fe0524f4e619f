"""Status of the watched directory's files (`GET /manifests`, `ffrtmp get manifests`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from controller.store.models import ManifestFile
from controller.store.queries import scenarios_t
from controller.store.transitions import jobs_t, nodes_t

manifest_files_t: sa.Table = ManifestFile.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class ManifestFileView:
    """One watched file: `ok`, `invalid` or `conflict`, its errors and the objects it owns."""

    path: str
    status: str
    errors: list[dict[str, Any]]
    objects: list[str]
    applied_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """The `GET /manifests` item shape."""
        applied = None if self.applied_at is None else self.applied_at.isoformat().replace("+00:00", "Z")
        return {"path": self.path, "status": self.status, "errors": self.errors,
                "objects": self.objects, "appliedAt": applied}


def list_manifest_files(session: Session) -> list[ManifestFileView]:
    """Every watched file's status, by path."""
    rows = session.execute(sa.select(manifest_files_t).order_by(manifest_files_t.c.path))
    return [ManifestFileView(r.path, r.status, r.errors, r.objects, r.applied_at) for r in rows]


# --- the watched directory's bookkeeping (controller.sources.directory) ----------------------

OBJECT_KINDS = ("Scenario", "Node", "Job")
"""Kinds a file can own, in apply order."""


def object_table(kind: str) -> sa.Table:
    """The table holding objects of `kind`."""
    return {"Scenario": scenarios_t, "Node": nodes_t, "Job": jobs_t}[kind]


def object_key(kind: str, name: str) -> str:
    """How a file's `objects` list names one object: `Job/news-720p`."""
    return f"{kind}/{name}"


def split_key(key: str) -> tuple[str, str]:
    """(kind, name) of an object key."""
    kind, _, name = key.partition("/")
    return kind, name


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A watched file as the last sync left it (`objects` is empty unless asked for)."""

    path: str
    content_hash: str | None
    status: str
    errors: list[dict[str, Any]]
    objects: list[str]
    applied_at: datetime | None


def stored_files(session: Session, with_objects: bool = False) -> dict[str, StoredFile]:
    """Every watched file's stored state by path; the object lists only `with_objects`."""
    t = manifest_files_t
    columns = [t.c.path, t.c.content_hash, t.c.status, t.c.errors, t.c.applied_at]
    if with_objects:
        columns.append(t.c.objects)
    out: dict[str, StoredFile] = {}
    for r in session.execute(sa.select(*columns)):
        objects = list(r.objects) if with_objects else []
        out[r.path] = StoredFile(r.path, r.content_hash, r.status, list(r.errors), objects,
                                 r.applied_at)
    return out


def save_manifest_file(
    session: Session,
    path: str,
    *,
    content_hash: str | None,
    status: str,
    errors: list[dict[str, Any]],
    objects: list[str],
    applied_at: datetime | None,
    now: datetime,
    exists: bool,
) -> None:
    """Insert (`exists=False`) or update one file's status row."""
    values = {"content_hash": content_hash, "status": status, "errors": errors,
              "objects": objects, "applied_at": applied_at, "updated_at": now}
    if exists:
        session.execute(_UPDATE_FILE, {"file_path": path, **values})
    else:
        session.execute(_INSERT_FILE, {"path": path, **values})


# Built once (a sync saves a row per file): the values come as parameters.
_INSERT_FILE = sa.insert(manifest_files_t)
_UPDATE_FILE = sa.update(manifest_files_t).where(
    manifest_files_t.c.path == sa.bindparam("file_path")
)


def delete_manifest_file(session: Session, path: str) -> None:
    """Forget a file that is gone from the directory."""
    session.execute(sa.delete(manifest_files_t).where(manifest_files_t.c.path == path))


def _take_ownership_statement(table: sa.Table) -> sa.Update:
    return (
        sa.update(table)
        .where(
            table.c.name.in_(sa.bindparam("names", expanding=True)),
            table.c.source == "file",
            table.c.source_path != sa.bindparam("path"),
        )
        .values(source_path=sa.bindparam("path"))
        .returning(table.c.name)
    )


# Built once: their compiled forms are cached, only the names and the path vary.
_TAKE_OWNERSHIP = {kind: _take_ownership_statement(object_table(kind)) for kind in OBJECT_KINDS}


def take_ownership(session: Session, kind: str, names: Sequence[str], path: str) -> list[str]:
    """Move objects owned by other files to `path`; the names moved."""
    statement = _TAKE_OWNERSHIP[kind]
    moved: list[str] = []
    for chunk in _chunks(names):
        moved.extend(session.execute(statement, {"names": list(chunk), "path": path}).scalars())
    return moved


def owned_row(session: Session, kind: str, name: str, path: str) -> Any:
    """The row of `kind/name` if the file `path` owns it (locked on PostgreSQL), else None."""
    table = object_table(kind)
    statement = sa.select(table).where(
        table.c.name == name, table.c.source == "file", table.c.source_path == path
    )
    if session.connection().dialect.name == "postgresql":
        statement = statement.with_for_update()
    return session.execute(statement).first()


def release_object(session: Session, kind: str, row_id: int, now: datetime) -> None:
    """Hand a file-owned object over to the API (source `api`): prune is off and its file is gone."""
    table = object_table(kind)
    session.execute(
        sa.update(table).where(table.c.id == row_id).values(source="api", source_path=None,
                                                             updated_at=now)
    )


def delete_scenario_row(session: Session, row_id: int) -> None:
    """Delete one scenario (jobs naming it wait with `ScenarioNotFound`)."""
    table = object_table("Scenario")
    session.execute(sa.delete(table).where(table.c.id == row_id))


def file_owned_objects(session: Session) -> list[tuple[str, str, str]]:
    """(kind, name, path) of every object a file owns, for the start-up sweep."""
    out: list[tuple[str, str, str]] = []
    for kind in OBJECT_KINDS:
        table = object_table(kind)
        rows = session.execute(
            sa.select(table.c.name, table.c.source_path).where(table.c.source == "file")
        )
        out.extend((kind, r.name, r.source_path or "") for r in rows)
    return out


def _chunks(items: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
