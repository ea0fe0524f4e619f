"""SQLite engine settings: page cache, WAL checkpoints off the commit path, unchecked writes."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from controller.config import DatabaseConfig
from controller.store.checkpoint import WalCheckpointer
from controller.store.engine import FifoLock, Store
from controller.store.transitions import jobs_t, nodes_t

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def sqlite_store(tmp_path: Path, _sqlite_template: Path) -> Iterator[Store]:
    path = tmp_path / "ffrtmp.db"
    shutil.copyfile(_sqlite_template, path)
    store = Store.from_config(DatabaseConfig(url=f"sqlite:///{path}", sqlite_cache_mib=16))
    yield store
    store.dispose()


def pragma(store: Store, name: str) -> int:
    with store.read() as session:
        return int(session.connection().exec_driver_sql(f"PRAGMA {name}").scalar_one())


def job_row(name: str, node_id: int | None) -> dict[str, object]:
    return dict(name=name, scenario_name="s", parameters={}, priority=2, status="assigned", node_id=node_id,
                attempt=1, retry_count=0, node_selector={}, suspend=False, fail_on_exit_codes=[], labels={},
                source="api", spec_hash="x", created_at=T0, updated_at=T0)


def test_the_page_cache_is_the_configured_size(sqlite_store: Store) -> None:
    assert pragma(sqlite_store, "cache_size") == -16 * 1024


def test_connections_leave_checkpoints_to_the_thread_once_it_runs(sqlite_store: Store) -> None:
    assert pragma(sqlite_store, "wal_autocheckpoint") == 1000  # SQLite's default until then
    assert sqlite_store.start_checkpoints(3600) is True
    assert pragma(sqlite_store, "wal_autocheckpoint") == 0
    sqlite_store.dispose()  # stops the thread
    assert sqlite_store._checkpointer is None


def test_no_checkpoint_thread_for_memory_databases_or_interval_zero(sqlite_store: Store) -> None:
    memory = Store.from_config(DatabaseConfig(url="sqlite://"))
    try:
        assert memory.start_checkpoints(1.0) is False
    finally:
        memory.dispose()
    assert sqlite_store.start_checkpoints(0) is False
    assert pragma(sqlite_store, "wal_autocheckpoint") == 1000


def test_a_passive_checkpoint_copies_the_wal_into_the_database_file(sqlite_store: Store) -> None:
    sqlite_store.start_checkpoints(3600)  # the thread will not run in this test's time
    with sqlite_store.write() as session:
        session.execute(sa.insert(jobs_t), [job_row(f"job-{i}", None) for i in range(200)])
    path = sqlite_store.engine.url.database
    assert path is not None
    checkpointer = WalCheckpointer(path, 1.0)
    connection = sqlite3.connect(path)
    try:
        result = checkpointer.checkpoint(connection)
    finally:
        connection.close()
    assert result.wal_pages > 0
    assert result.copied_pages == result.wal_pages and not result.busy
    assert checkpointer.runs == 1


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WalCheckpointer("x.db", 0)


def test_an_unchecked_write_skips_reference_checks_and_the_next_write_has_them_again(
    sqlite_store: Store,
) -> None:
    with sqlite_store.write(check_references=False) as session:
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 0
    # The same pooled connection is handed out next: its checks are back on.
    with sqlite_store.write() as session:
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    with pytest.raises(sa.exc.IntegrityError), sqlite_store.write() as session:
        session.execute(sa.insert(jobs_t).values(**job_row("orphan", 999)))
    with sqlite_store.read() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(jobs_t)).scalar_one() == 0
        assert session.execute(sa.select(sa.func.count()).select_from(nodes_t)).scalar_one() == 0


def test_an_unchecked_write_that_fails_also_restores_the_checks(sqlite_store: Store) -> None:
    with pytest.raises(RuntimeError), sqlite_store.write(check_references=False):
        raise RuntimeError("boom")
    assert pragma(sqlite_store, "foreign_keys") == 1


def test_the_write_lock_goes_to_waiters_in_arrival_order_and_is_reentrant() -> None:
    lock = FifoLock()
    order: list[str] = []
    lock.acquire()
    lock.acquire()  # reentrant
    lock.release()

    def writer(name: str, queued: threading.Event) -> None:
        queued.set()
        with lock:
            order.append(name)

    threads = []
    for name in ("first", "second", "third"):
        queued = threading.Event()
        thread = threading.Thread(target=writer, args=(name, queued))
        thread.start()
        queued.wait(5)
        deadline = time.monotonic() + 5
        while len(lock._waiters) < len(threads) + 1 and time.monotonic() < deadline:
            time.sleep(0.001)  # until it waits on the lock: arrival order is the test's
        threads.append(thread)
    # The holder takes it straight back: with RLock it would go first again; here it queues.
    lock.release()
    with lock:
        order.append("holder again")
    for thread in threads:
        thread.join(5)
    assert order == ["first", "second", "third", "holder again"]
    with pytest.raises(RuntimeError):
        lock.release()
