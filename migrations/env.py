"""Alembic environment: runs online against the configured engine, or offline to print SQL.

The controller calls this through `controller.store.migrate`; `alembic` itself is
not needed on the command line. The connection or URL comes in through
`config.attributes`.
"""

from alembic import context

from controller.store.models import metadata

config = context.config


def run_offline() -> None:
    """Emit SQL for an operator to apply with sqlite3 or psql."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate over the connection handed in by controller.store.migrate."""
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
