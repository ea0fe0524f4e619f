"""Migrations give exactly the models, on SQLite and PostgreSQL, and go back down to nothing."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from controller.config import DatabaseConfig
from controller.store.engine import Store
from controller.store.migrate import (
    current_revision,
    downgrade,
    head_revision,
    is_current,
    upgrade,
    upgrade_sql,
)
from controller.store.models import metadata

SPEC_INDEXES = {
    "jobs": {"idx_jobs_node_status", "idx_jobs_priority_created"},
    "nodes": {"idx_nodes_status_heartbeat"},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("empty_pg_url")
    return url


def test_upgrade_gives_exactly_the_models_and_downgrade_empties(empty_url: str) -> None:
    store = Store.from_config(DatabaseConfig(url=empty_url))
    assert current_revision(store) is None
    assert not is_current(store)

    upgrade(store)
    assert current_revision(store) == head_revision()
    assert is_current(store)
    with store.engine.connect() as connection, warnings.catch_warnings():
        # The spec's DESC index is an expression index that autogenerate can't compare;
        # it is checked by name below.
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), metadata
        )
    assert diff == []

    inspector = sa.inspect(store.engine)
    for table, names in SPEC_INDEXES.items():
        assert names <= {ix["name"] for ix in inspector.get_indexes(table)}
    token_uniques = inspector.get_unique_constraints("auth_tokens")
    assert any(u["column_names"] == ["token_hash"] for u in token_uniques)

    downgrade(store, "base")
    remaining = set(sa.inspect(store.engine).get_table_names()) - {"alembic_version"}
    assert remaining == set()
    assert current_revision(store) is None
    store.dispose()


def test_upgrade_twice_is_a_no_op(empty_url: str) -> None:
    store = Store.from_config(DatabaseConfig(url=empty_url))
    upgrade(store)
    upgrade(store)
    assert is_current(store)
    store.dispose()


def test_offline_sql_builds_the_same_sqlite_schema(tmp_path: Path) -> None:
    sql = upgrade_sql("sqlite:///ffrtmp.db")
    assert "CREATE TABLE jobs" in sql
    assert "idx_jobs_priority_created" in sql
    path = tmp_path / "by-hand.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(sql)
    store = Store.from_config(DatabaseConfig(url=f"sqlite:///{path}"))
    assert is_current(store)
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {t.name for t in metadata.sorted_tables} <= tables
    store.dispose()


def test_offline_sql_for_postgresql_applies_with_psql_semantics(empty_pg_url: str) -> None:
    sql = upgrade_sql(empty_pg_url)
    assert "CREATE TABLE jobs" in sql
    assert "BEGIN;" in sql and "COMMIT;" in sql
    engine = sa.create_engine(empty_pg_url)
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        raw.autocommit = True
        with raw.cursor() as cursor:
            cursor.execute(sql)
    store = Store.from_config(DatabaseConfig(url=empty_pg_url))
    assert is_current(store)
    store.dispose()
    engine.dispose()
