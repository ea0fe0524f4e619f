"""Schema migrations (Alembic) run from inside the controller: upgrade, offline SQL, status."""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from controller.store.engine import Store, normalize_url

# Any constant works; it only has to be the same for every controller of one database.
_PG_MIGRATION_LOCK = 0x66667274


def _script_location() -> Path:
    return Path(str(resources.files("controller._migrations")))


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the shipped migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_script_location()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(store: Store) -> str | None:
    """The revision the database is at (None when it was never migrated)."""
    with store.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_current(store: Store) -> bool:
    """True when the database schema is at the code's head revision."""
    return current_revision(store) == head_revision()


def upgrade(store: Store, revision: str = "head") -> None:
    """Bring the schema up to `revision`; several controllers may call this at once."""
    _run(store, lambda cfg: command.upgrade(cfg, revision))


def downgrade(store: Store, revision: str = "base") -> None:
    """Take the schema down to `revision` (`base` drops every table)."""
    _run(store, lambda cfg: command.downgrade(cfg, revision))


def _run(store: Store, action: object) -> None:
    assert callable(action)
    with store.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Serialize concurrent upgrades of replicas starting together.
            connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            connection.commit()
        try:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            action(cfg)
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK}
                )
                connection.commit()


def upgrade_sql(url: str, revision: str = "head") -> str:
    """The SQL that upgrades an empty database of `url`'s dialect, for sqlite3 or psql."""
    buffer = io.StringIO()
    cfg = alembic_config(normalize_url(url).render_as_string(hide_password=False))
    cfg.output_buffer = buffer
    command.upgrade(cfg, revision, sql=True)
    return buffer.getvalue()
