"""Helpers for the watched-directory tests: manifest texts, a source factory, audit reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from controller.config import load_config
from controller.sources.directory import DirectorySource
from controller.store.engine import Store
from controller.store.manifest_files import ManifestFileView, list_manifest_files
from controller.store.models import AuditLog
from controller.store.queries import scenarios_t
from controller.store.transitions import jobs_t, nodes_t

NOW = datetime(2026, 1, 1, tzinfo=UTC)
audit_t: sa.Table = AuditLog.__table__  # type: ignore[attr-defined]


def scenario(name: str = "enc", command: str = "[echo, '{res}']", defaults: str = "{res: 720p}") -> str:
    return (f"apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata:\n  name: {name}\n"
            f"spec:\n  command: {command}\n  defaults: {defaults}\n")


def job(name: str, scenario: str = "enc", priority: str = "medium", extra: str = "") -> str:
    return (f"apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata:\n  name: {name}\n"
            f"spec:\n  scenario: {scenario}\n  priority: {priority}\n{extra}")


def node(name: str, slots: int = 1) -> str:
    return f"apiVersion: ffrtmp.io/v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  slots: {slots}\n"


def docs(*texts: str) -> str:
    return "---\n".join(texts)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Farm:
    """Reads of the database the tests assert on."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def jobs(self) -> dict[str, Any]:
        with self.store.read() as s:
            return {r.name: r for r in s.execute(sa.select(jobs_t))}

    def nodes(self) -> dict[str, Any]:
        with self.store.read() as s:
            return {r.name: r for r in s.execute(sa.select(nodes_t))}

    def scenarios(self) -> dict[str, Any]:
        with self.store.read() as s:
            return {r.name: r for r in s.execute(sa.select(scenarios_t))}

    def files(self) -> dict[str, ManifestFileView]:
        with self.store.read() as s:
            return {f.path: f for f in list_manifest_files(s)}

    def audit(self, event_type: str | None = None) -> list[Any]:
        statement = sa.select(audit_t).order_by(audit_t.c.id)
        if event_type is not None:
            statement = statement.where(audit_t.c.event_type == event_type)
        with self.store.read() as s:
            return list(s.execute(statement))

    def audit_count(self) -> int:
        with self.store.read() as s:
            return int(s.execute(sa.select(sa.func.count()).select_from(audit_t)).scalar_one())


@pytest.fixture
def farm(store: Store) -> Farm:
    return Farm(store)


SourceFactory = Callable[..., DirectorySource]


@pytest.fixture
def make_source(store: Store, db_url: str) -> Iterator[SourceFactory]:
    """Build DirectorySources on the test's database; observers are stopped at the end."""
    made: list[DirectorySource] = []

    def build(root: Path, prune: bool = True, on_change: Callable[[], None] | None = None,
              resync: float = 30.0, **kwargs: Any) -> DirectorySource:
        config = load_config(env={}, overrides={
            "database": {"url": db_url},
            "manifests": {"dir": str(root), "prune": prune, "resyncSeconds": resync},
        })
        source = DirectorySource(store, config, on_change=on_change, **kwargs)
        made.append(source)
        return source

    yield build
    for source in made:
        source.stop()
