"""WAL checkpoints of a SQLite store, off the write path.

Under WAL a commit appends pages to the `-wal` file; a checkpoint copies them back
into the database file and syncs it. SQLite's default runs that checkpoint inside
the commit that makes the WAL pass 1,000 pages: that one commit then pays for
every page written since the last checkpoint (on a pass that binds 10,000 jobs,
0.2 s of its 0.25 s commit), and every request queued behind it waits too.

The controller turns that automatic checkpoint off on its connections and runs a
passive checkpoint from a thread of its own every `sqliteCheckpointSeconds`. A
passive checkpoint never takes the write lock and never waits for readers: it
copies what no reader still needs, and writers go on meanwhile. Durability is the
same either way (a commit is in the WAL before it is acknowledged; a crash before
the checkpoint replays the WAL at the next open). Other processes (the CLI, the
benchmarks' seeding) keep SQLite's default.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import NamedTuple

log = logging.getLogger("controller.store")


class CheckpointResult(NamedTuple):
    """What one `PRAGMA wal_checkpoint` reported."""

    busy: bool
    """A reader or writer kept part of the WAL from being copied."""
    wal_pages: int
    """Pages in the WAL when the checkpoint ran."""
    copied_pages: int
    """Pages of the WAL now in the database file."""


class WalCheckpointer:
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` on `path` every `interval` seconds."""

    def __init__(self, path: str, interval: float, busy_timeout_ms: int = 1000) -> None:
        if interval <= 0:
            raise ValueError("a checkpoint interval must be positive")
        self.path = path
        self.interval = interval
        self.busy_timeout_ms = busy_timeout_ms
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the checkpoint thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="ffrtmp-wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its checkpoint in flight, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def checkpoint(self, connection: sqlite3.Connection) -> CheckpointResult:
        """One passive checkpoint through `connection`."""
        row = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.runs += 1
        return CheckpointResult(bool(row[0]), int(row[1]), int(row[2]))

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            while not self._stop.wait(self.interval):
                try:
                    result = self.checkpoint(connection)
                except sqlite3.Error as exc:
                    # A locked or busy database now is a checkpoint at the next tick.
                    log.warning("[Store] WAL checkpoint failed: %s", exc)
                    continue
                if result.busy or result.copied_pages < result.wal_pages:
                    log.debug("[Store] WAL checkpoint partial: %d of %d pages (readers active)",
                              result.copied_pages, result.wal_pages)
        finally:
            connection.close()
