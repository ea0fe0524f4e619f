"""`ffrtmp token create|list|revoke`: API tokens, straight in the database (for bootstrap).

These commands open the database themselves (like `ffrtmp db upgrade`), so the first
admin token can be made before anyone can call the API; run them where the
database is. Later tokens may also come from `POST /auth/tokens`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from controller.cli.main import CliError, ConfigOption, DbOption, controller_config

if TYPE_CHECKING:
    from controller.auth.manager import AuthManager


class Role(StrEnum):
    """The roles of SPEC section 7 (kept here so `ffrtmp --help` needs no database code)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    WORKER = "worker"

token_app: typer.Typer = typer.Typer(help="API tokens (opens the database directly).", no_args_is_help=True)

CLI_ACTOR = "cli"


@contextmanager
def _auth(config: ConfigOption, db: DbOption) -> Iterator[AuthManager]:
    from controller.auth.manager import AuthManager
    from controller.store import migrate
    from controller.store.engine import Store

    cfg = controller_config(config, db)
    store = Store.from_config(cfg.database)
    try:
        # Bootstrap may come before the controller ever ran: bring the schema up first.
        migrate.upgrade(store)
        yield AuthManager(store, cfg.auth)
    finally:
        store.dispose()


def _iso(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@token_app.command("create")
def create(
    client: Annotated[str, typer.Option("--client", help="Client id (person, CI job, worker).")],
    role: Annotated[Role, typer.Option("--role", help="admin, operator, viewer or worker.")],
    node: Annotated[
        str | None, typer.Option("--node", help="The node a worker token reports for.")
    ] = None,
    expires_minutes: Annotated[
        float | None, typer.Option("--expires-minutes", help="Lifetime (default auth.tokenExpiryMinutes).")
    ] = None,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Create a token and print it alone on a line (shown once; details go to stderr)."""
    from controller.auth.errors import InvalidTokenRequest

    with _auth(config, db) as auth:
        try:
            issued = auth.issue_token(client, role.value, node, expires_minutes, actor=CLI_ACTOR)
        except InvalidTokenRequest as exc:
            raise CliError(str(exc), exit_code=2) from exc
    typer.echo(issued.token)
    typer.echo(
        f"created {issued.id} for {client} (role {issued.role.value}"
        + (f", node {node}" if node else "") + f"), expires {_iso(issued.expires_at)}",
        err=True,
    )


@token_app.command("list")
def list_tokens(
    client: Annotated[str | None, typer.Option("--client", help="Only this client's tokens.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """List tokens (never their secrets): id, client, role, node, expiry, last use, state."""
    if output not in ("table", "json"):
        raise CliError("--output must be table or json", exit_code=2)
    with _auth(config, db) as auth:
        tokens = auth.list_tokens(client)
    now = datetime.now(UTC)
    rows = [
        {"id": t.id, "clientId": t.client_id, "role": t.role, "node": t.node,
         "createdAt": _iso(t.created_at), "expiresAt": _iso(t.expires_at),
         "lastUsedAt": _iso(t.last_used_at), "revokedAt": _iso(t.revoked_at),
         "state": "revoked" if t.revoked_at else ("expired" if now >= t.expires_at else "active")}
        for t in tokens
    ]
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    columns = ("id", "clientId", "role", "node", "expiresAt", "lastUsedAt", "state")
    table = [[str(r[c] if r[c] is not None else "-") for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in table)]) for i, c in enumerate(columns)]
    for line in ([c.upper() for c in columns], *table):
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


@token_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_...), from `token list`.")],
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Revoke a token by id; it is refused from the next request on."""
    with _auth(config, db) as auth:
        if not auth.revoke(token_id, actor=CLI_ACTOR):
            raise CliError(f"no token {token_id!r}")
    typer.echo(f"revoked {token_id}")
