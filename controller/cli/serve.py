"""`ffrtmp controller`: run the controller process (API, reconcile loop, watched directory)."""

from __future__ import annotations

import gc
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from controller.cli.main import CliError, ConfigOption, DbOption, controller_config


class LogFormat(StrEnum):
    """How log lines look."""

    TEXT = "text"
    JSON = "json"


def controller(
    config: ConfigOption = None,
    manifests: Annotated[
        Path | None, typer.Option("--manifests", help="Watched manifests directory.")
    ] = None,
    db: DbOption = None,
    host: Annotated[str | None, typer.Option("--host", help="Listen address.")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Listen port (0: any free port, logged).")
    ] = None,
    log_format: Annotated[LogFormat, typer.Option("--log-format", help="Log lines.")] = LogFormat.TEXT,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning.")] = "info",
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate (chain): serve HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")
    ] = None,
) -> None:
    """Run the controller: API, reconcile loop and watched directory, until SIGTERM."""
    from controller.observability.logging import configure_logging
    from controller.service import ControllerService, ServeOptions

    if (tls_cert is None) != (tls_key is None):
        raise CliError("--tls-cert and --tls-key go together", exit_code=2)
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise CliError(f"{path}: no such file", exit_code=2)
    cfg = controller_config(
        config, db, **{"manifests.dir": str(manifests) if manifests is not None else None,
                       "server.host": host, "server.port": port},
    )
    try:
        configure_logging(log_level, log_format.value)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from exc
    service = ControllerService(cfg)
    # What start-up built (modules, the app, schemas, compiled statements) lives as long
    # as this process: parked out of the cyclic collector's reach, so that a full
    # collection under load scans what requests allocate, not all of it. One took
    # ~200 ms here every few thousand requests and held every request up meanwhile.
    gc.freeze()
    options = ServeOptions(
        cfg.server.host, cfg.server.port,
        str(tls_cert) if tls_cert is not None else None,
        str(tls_key) if tls_key is not None else None,
    )
    raise typer.Exit(service.serve(options))
