"""`ffrtmp worker`: run jobs for a controller, as one node of the farm."""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Annotated

import typer

from controller.observability.logging import configure_logging
from controller.worker.agent import Worker, WorkerSettings


def _labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected key=value", param_hint="--label")
        labels[key] = value
    return labels


def worker(
    name: Annotated[str, typer.Option("--name", help="This node's name (lowercase, digits, '-').")],
    server: Annotated[
        str | None, typer.Option("--server", envvar="FFRTMP_SERVER", help="Controller URL.")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="FFRTMP_TOKEN", help="A worker token for this node.")
    ] = None,
    slots: Annotated[int, typer.Option("--slots", min=1, help="Jobs run at once.")] = 1,
    label: Annotated[list[str] | None, typer.Option("--label", help="Node label k=v (repeatable).")] = None,
    drain_seconds: Annotated[
        float, typer.Option("--drain-seconds", min=0, help="On SIGTERM, time running jobs get to finish.")
    ] = 30.0,
    log_format: Annotated[str, typer.Option("--log-format", help="text or json.")] = "text",
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run a worker: heartbeat, take assignments, run them (no shell), report; drain on SIGTERM."""
    if log_format not in ("text", "json"):
        raise typer.BadParameter("text or json", param_hint="--log-format")
    configure_logging(log_level.upper(), "json" if log_format == "json" else "text")
    # One line per heartbeat and report is noise; failures are logged by the agent.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = WorkerSettings(
        name=name,
        server=server,
        token=token,
        slots=slots,
        labels=_labels(label or []),
        drain_grace_seconds=drain_seconds,
    )
    agent = Worker(settings)

    def _drain(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("controller.worker").info("[Worker] signal %d: draining", signum)
        agent.drain()

    signal.signal(signal.SIGTERM, _drain)
    signal.signal(signal.SIGINT, _drain)
    agent.run()


def main() -> None:
    """`python -m controller.cli.worker_cmd`: `ffrtmp worker` without loading the other commands.

    The full `ffrtmp` command imports the store and the migrations (about a second of
    CPU); a fleet of workers restarting at once, or a test starting many, can skip that.
    """
    typer.run(worker)


if __name__ == "__main__":
    main()
