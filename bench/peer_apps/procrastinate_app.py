"""procrastinate on PostgreSQL (BENCH_PG_DSN), for `procrastinate worker`."""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1/postgres")))


@app.task(name="noop")
async def noop() -> None:
    """Nothing."""
