"""The controller with a proposed fix applied in-process, to measure its gain before anyone
changes `controller/` (this package never edits the controller's code).

    python -m bench.whatif controller --db URL ...   # `ffrtmp controller` with the patch below

The patch (proposal 1 of docs/benchmarks/README.md): on SQLite, writers of one process
queue on a `threading.Lock` before `BEGIN IMMEDIATE`. Without it, every writer thread
that finds the write lock taken sleeps in SQLite's busy handler, whose back-off steps
are 1, 2, 5, 10, ... up to 100 ms, long after the lock was freed; with it, the next
writer starts the moment the previous one commits. Other processes (the CLI, a second
controller) still meet the busy timeout as before.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlmodel import Session

from controller.store import engine as store_engine


def apply_write_lock() -> None:
    """Serialize `Store.write` transactions of this process on SQLite behind one lock."""
    original = store_engine.Store.write
    lock = threading.RLock()

    @contextmanager
    def write(self: store_engine.Store) -> Iterator[Session]:
        if self.engine.dialect.name != "sqlite":
            with original(self) as session:
                yield session
            return
        with lock, original(self) as session:
            yield session

    store_engine.Store.write = write  # type: ignore[method-assign]


if __name__ == "__main__":
    apply_write_lock()
    from controller.cli.main import main
    sys.argv = ["ffrtmp", *sys.argv[1:]]
    main()
