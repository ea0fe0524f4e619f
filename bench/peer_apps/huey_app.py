"""huey's `SqliteHuey` at our durability (WAL, synchronous=NORMAL), for `huey_consumer`.

The database file comes from BENCH_HUEY_DB. `noop` returns its queueing delay (stored as
the task's result, one write, like our completion report); `spawn_true` also starts
`true`, as our no-op job does.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from huey import Huey
from huey.storage import SqliteStorage


class NormalSqliteStorage(SqliteStorage):  # type: ignore[misc]
    """SqliteStorage with `synchronous=NORMAL` (huey's `fsync` flag knows only FULL or OFF)."""

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=1")
        return conn


huey = Huey("bench", storage_class=NormalSqliteStorage, filename=os.environ.get("BENCH_HUEY_DB", "huey.db"))


@huey.task()
def noop(enqueued_at: float) -> float:
    """Nothing: its result is how long it waited."""
    return time.time() - enqueued_at


@huey.task()
def spawn_true(enqueued_at: float) -> float:
    """Start `true` (what our no-op job does), then answer how long it waited."""
    started = time.time() - enqueued_at
    subprocess.run(["true"], check=False)
    return started
