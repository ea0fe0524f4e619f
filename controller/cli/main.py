"""The `ffrtmp` command: every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller import __version__

if TYPE_CHECKING:
    from controller.config import ControllerConfig

app = typer.Typer(
    name="ffrtmp",
    help="Controller of a transcoding/job farm: manifests in, work scheduled, faults healed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


class CliError(Exception):
    """An error the command reports as one line; `exit_code` is the process status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="ControllerConfig YAML file.", envvar="FFRTMP_CONFIG"),
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (sqlite:///file.db or postgresql+psycopg://...)."),
]


def controller_config(config: Path | None, db: str | None, **flags: Any) -> ControllerConfig:
    """The controller config from `--config`, the environment and the given flags."""
    from controller.config import load_config

    overrides: dict[str, Any] = {}
    if db is not None:
        overrides["database"] = {"url": db}
    for section_key, value in flags.items():
        if value is None:
            continue
        section, _, key = section_key.partition(".")
        overrides.setdefault(section, {})[key] = value
    return load_config(config, overrides=overrides)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Manifest files or directories.")],
) -> None:
    """Check manifests offline (exit 0 valid, 1 with `file:line: field: message` per problem)."""
    from controller.manifests.validate import validate_paths

    report = validate_paths(paths)
    for problem in report.problems:
        typer.echo(str(problem))
    if report.problems:
        typer.echo(
            f"{len(report.problems)} problem(s) in {len(report.files)} file(s)", err=True
        )
        raise typer.Exit(1)
    typer.echo(f"{len(report.objects)} object(s) in {len(report.files)} file(s) are valid")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the manifest kinds (for editors and CI)."""
    import json

    from controller.manifests.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    db: DbOption = None,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it (for sqlite3/psql).")
    ] = False,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Upgrade the database schema to the newest revision (the controller also does this at start)."""
    from controller.store import migrate
    from controller.store.engine import Store

    cfg = controller_config(config, db)
    if sql:
        sys.stdout.write(migrate.upgrade_sql(cfg.database.url, revision))
        return
    store = Store.from_config(cfg.database)
    try:
        before = migrate.current_revision(store)
        migrate.upgrade(store, revision)
        after = migrate.current_revision(store)
    finally:
        store.dispose()
    if before == after:
        typer.echo(f"database is at revision {after}; nothing to do")
    else:
        typer.echo(f"upgraded database from {before or 'empty'} to {after}")


@db_app.command("current")
def db_current(config: ConfigOption = None, db: DbOption = None) -> None:
    """Print the database's schema revision and whether it is current."""
    from controller.store import migrate
    from controller.store.engine import Store

    store = Store.from_config(controller_config(config, db).database)
    try:
        current = migrate.current_revision(store)
        head = migrate.head_revision()
    finally:
        store.dispose()
    state = "current" if current == head else f"behind head {head}"
    typer.echo(f"{current or 'empty'} ({state})")


def _is_setup_error(exc: Exception) -> bool:
    """A bad configuration or database URL (exit 2); imported only on this error path."""
    from controller.config import ConfigError
    from controller.store.engine import StoreError

    return isinstance(exc, ConfigError | StoreError)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `ffrtmp` command."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="ffrtmp", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: the message and the usage hint
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last resort: one line, never a traceback
        if _is_setup_error(exc):
            typer.echo(f"error: {exc}", err=True)
            sys.exit(2)
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


# Commands in modules of their own; imported last, as they use the options above.
from controller.cli import client_cmds, serve, tokens, up, worker_cmd  # noqa: E402

app.command("controller")(serve.controller)
app.add_typer(tokens.token_app, name="token")
app.command("up")(up.up)
app.command("worker")(worker_cmd.worker)
app.command("apply")(client_cmds.apply)
app.command("diff")(client_cmds.diff)
app.add_typer(client_cmds.delete_app, name="delete")
app.add_typer(client_cmds.get_app, name="get")
app.add_typer(client_cmds.describe_app, name="describe")
app.add_typer(client_cmds.jobs_app, name="jobs")
app.command("logs")(client_cmds.logs)
app.add_typer(client_cmds.wait_app, name="wait")
app.add_typer(client_cmds.queue_app, name="queue")
app.command("audit")(client_cmds.audit)
