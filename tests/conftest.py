"""Shared fixtures: one database fixture, parametrized over SQLite and the local PostgreSQL."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from controller.config import DatabaseConfig
from controller.store.engine import Store
from controller.store.migrate import upgrade
from controller.store.models import metadata

# The local server of the development machines and CI (trust auth); override to point elsewhere.
PG_ADMIN_URL = os.environ.get(
    "FFRTMP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _pg_admin() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[sa.Engine]:
    """The PostgreSQL server; tests that need it fail (not skip) when it is down."""
    engine = _pg_admin()
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture
def empty_pg_url(pg_server: sa.Engine) -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped after the test."""
    name = f"ffrtmp_test_{uuid.uuid4().hex[:12]}"
    with pg_server.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with pg_server.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def _pg_migrated(pg_server: sa.Engine) -> Iterator[str]:
    """One migrated PostgreSQL database for the session; tests truncate it before use."""
    name = f"ffrtmp_test_{uuid.uuid4().hex[:12]}"
    with pg_server.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    store = Store.from_config(DatabaseConfig(url=url))
    upgrade(store)
    store.dispose()
    yield url
    with pg_server.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    store = Store.from_config(DatabaseConfig(url=f"sqlite:///{path}"))
    upgrade(store)
    with store.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a migrated, empty database: a SQLite file, then the local PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("_sqlite_template")
        path = tmp_path / "ffrtmp.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("_pg_migrated")
    engine = sa.create_engine(url)
    tables = ", ".join(
        t.name for t in metadata.sorted_tables
    )
    with engine.begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A Store on `db_url`."""
    s = Store.from_config(DatabaseConfig(url=db_url))
    yield s
    s.dispose()
