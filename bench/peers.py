"""What a user would pick instead, and what the machine allows, at the same durability.

- huey `SqliteHuey` (WAL, synchronous=NORMAL, like ours): `consumers` consumer processes
  x `threads` worker threads (our dispatch's 4 workers x 8 slots), tasks enqueued one by
  one from the bench process; throughput = tasks / (first enqueue to last result).
  Two tasks: `noop` (a Python function: the issue's "no-op task") and `spawn_true`
  (starts `true`, as our no-op job does: the like-for-like figure).
- procrastinate on PostgreSQL (server defaults: fsync, synchronous_commit on):
  `workers` worker processes x `concurrency`, jobs deferred in batches of 500.
- raw `sqlite3`: one connection, WAL, synchronous=NORMAL, a claim-and-complete loop
  (`BEGIN IMMEDIATE; UPDATE ... RETURNING; COMMIT` to claim the next job in queue order,
  then another transaction to complete it): no HTTP, no framework, no process spawn.
  The raw limit of the storage this product uses.
- starting `true` with nothing around it: `processes` x `threads` (the farms' layout),
  each thread `subprocess.run(["true"])` back to back, as a worker starts a job; no
  queue, no database, no HTTP. The machine's limit for any design that starts a process
  per job (ours, huey's `spawn_true`): no such design can dispatch faster here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.farm import percentiles
from bench.machine import busy_cores, cpu_seconds

PG_ADMIN = os.environ.get("FFRTMP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def huey(tasks: int, task: str = "noop", consumers: int = 4, threads: int = 8) -> dict[str, Any]:
    """SqliteHuey: enqueue `tasks` tasks while `consumers` x `threads` consume them."""
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-huey-") as tmp:
        db = f"{tmp}/huey.db"
        os.environ["BENCH_HUEY_DB"] = db
        from bench.peer_apps import huey_app
        huey_app.huey.storage.filename = db  # the module may have been imported before
        huey_app.huey.storage.close()
        huey_app.huey.storage.initialize_schema()
        env = {**os.environ, "BENCH_HUEY_DB": db}
        # Polling as tight as huey allows (1 ms, backing off to 50 ms): huey has no push.
        processes = [subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "bench.peer_apps.huey_app.huey", "-w", str(threads),
             "-k", "thread", "-d", "0.001", "-m", "0.05", "-b", "1.1", "-q"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ) for _ in range(consumers)]
        try:
            time.sleep(2.0)  # the consumers start and poll
            function = getattr(huey_app, task)
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            began = time.perf_counter()
            results = [function(time.time()) for _ in range(tasks)]
            enqueued = time.perf_counter() - began
            deadline = time.monotonic() + max(120.0, tasks / 5)
            while huey_app.huey.storage.result_store_size() < tasks:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError("huey did not finish")
                time.sleep(0.01)
            elapsed = time.perf_counter() - began
            busy = busy_cores(cpu0, wall0)
            delays = [r.get(blocking=False) for r in results]
        finally:
            _stop(processes)
            huey_app.huey.storage.close()
    return {"peer": f"huey SqliteHuey ({task})", "durability": "WAL, synchronous=NORMAL",
            "consumers": consumers, "threads": threads, "tasks": tasks, "enqueue_seconds": round(enqueued, 2),
            "seconds": round(elapsed, 2), "per_s": round(tasks / elapsed, 1), "machine_busy_cores": busy,
            "enqueue_to_start_ms": percentiles([d for d in delays if d is not None])}


def _pg_database() -> tuple[str, sa.Engine]:
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"ffrtmp_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return name, admin


def _drop(name: str, admin: sa.Engine) -> None:
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pg_url(name: str) -> str:
    """The SQLAlchemy URL of a database on the bench's PostgreSQL server."""
    return sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


def procrastinate(jobs: int, workers: int = 4, concurrency: int = 8) -> dict[str, Any]:
    """procrastinate on PostgreSQL: defer `jobs` no-op jobs while `workers` x `concurrency` run them."""
    name, admin = _pg_database()
    dsn = pg_url(name).replace("postgresql+psycopg://", "postgresql://")
    env = {**os.environ, "BENCH_PG_DSN": dsn}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([sys.executable, "-m", "procrastinate", "--app", "bench.peer_apps.procrastinate_app.app",
                        "schema", "--apply"], env=env, check=True, capture_output=True)
        processes = [subprocess.Popen(
            [sys.executable, "-m", "procrastinate", "--app", "bench.peer_apps.procrastinate_app.app",
             "--log-level", "warning", "worker", "--concurrency", str(concurrency)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ) for _ in range(workers)]
        time.sleep(2.0)
        result = asyncio.run(_procrastinate(dsn, jobs))
    finally:
        _stop(processes)
        _drop(name, admin)
    return {"peer": "procrastinate (PostgreSQL)", "durability": "PostgreSQL defaults (fsync, synchronous_commit on)",
            "workers": workers, "concurrency": concurrency, **result}


async def _procrastinate(dsn: str, jobs: int) -> dict[str, Any]:
    import psycopg
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=dsn))  # this run's database; the task by name
    async with app.open_async():
        noop = app.configure_task("noop")
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        began = time.perf_counter()
        for start in range(0, jobs, 500):
            await noop.batch_defer_async(*[{} for _ in range(min(500, jobs - start))])
        enqueued = time.perf_counter() - began
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + max(120.0, jobs / 5)
        while True:
            row = await (await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('succeeded', 'failed')")).fetchone()
            if row is not None and row[0] >= jobs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("procrastinate did not finish")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - began
        busy = busy_cores(cpu0, wall0)
        rows = await (await conn.execute(
            "SELECT extract(epoch FROM s.at - d.at) FROM procrastinate_events d JOIN procrastinate_events s "
            "ON s.job_id = d.job_id AND s.type = 'started' WHERE d.type = 'deferred'")).fetchall()
    return {"jobs": jobs, "enqueue_seconds": round(enqueued, 2), "seconds": round(elapsed, 2),
            "per_s": round(jobs / elapsed, 1), "machine_busy_cores": busy,
            "enqueue_to_start_ms": percentiles([float(r[0]) for r in rows])}


def raw_sqlite(jobs: int) -> dict[str, Any]:
    """A bare sqlite3 claim-and-complete loop, WAL + synchronous=NORMAL, one connection."""
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-raw-") as tmp:
        db = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, priority INTEGER NOT NULL, status TEXT NOT NULL, "
                   "created_at REAL NOT NULL, started_at REAL, finished_at REAL)")
        db.execute("CREATE INDEX jobs_queue ON jobs (priority DESC, created_at) WHERE status = 'pending'")
        began = time.perf_counter()
        for i in range(jobs):  # enqueue: one transaction per job, as one `POST /jobs` is
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO jobs (priority, status, created_at) VALUES (?, 'pending', ?)", (i % 5, time.time()))
            db.execute("COMMIT")
        enqueue = time.perf_counter() - began
        began = time.perf_counter()
        while True:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE id = (SELECT id FROM jobs "
                "WHERE status = 'pending' ORDER BY priority DESC, created_at LIMIT 1) RETURNING id",
                (time.time(),)).fetchone()
            db.execute("COMMIT")
            if row is None:
                break
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE jobs SET status = 'completed', finished_at = ? WHERE id = ?", (time.time(), row[0]))
            db.execute("COMMIT")
        loop = time.perf_counter() - began
        db.close()
    return {"peer": "raw sqlite3 claim-and-complete", "durability": "WAL, synchronous=NORMAL", "jobs": jobs,
            "enqueue_per_s": round(jobs / enqueue, 1), "per_s": round(jobs / loop, 1),
            "enqueue_claim_complete_per_s": round(jobs / (enqueue + loop), 1)}


def _start_true(count: int, threads: int, start: Any, spans: Any) -> None:
    """One process of `spawn_limit`: `threads` threads starting `true` `count` times in all."""
    true = shutil.which("true") or "true"

    def loop(n: int) -> None:
        for _ in range(n):
            subprocess.run([true], check=False)

    share = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    workers = [threading.Thread(target=loop, args=(n,)) for n in share]
    start.wait()  # every process is up: the interpreters' start-up is not measured
    began = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    spans.put((began, time.monotonic()))  # nor their exit


def spawn_limit(starts: int, processes: int = 4, threads: int = 8) -> dict[str, Any]:
    """Processes started per second by `processes` x `threads` starting `true` back to back."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters, like the consumers
    start, spans = context.Barrier(processes + 1), context.SimpleQueue()
    share = [starts // processes + (1 if i < starts % processes else 0) for i in range(processes)]
    ready = [context.Process(target=_start_true, args=(n, threads, start, spans)) for n in share]
    for process in ready:
        process.start()
    start.wait(timeout=60)
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    ended = [spans.get() for _ in ready]  # CLOCK_MONOTONIC: one clock for every process
    busy = busy_cores(cpu0, wall0)
    for process in ready:
        process.join()
    if any(process.exitcode != 0 for process in ready):
        raise RuntimeError("a process starting `true` failed")
    elapsed = max(end for _, end in ended) - min(begin for begin, _ in ended)
    return {"peer": "starting `true`, no queue", "processes": processes, "threads": threads, "starts": starts,
            "seconds": round(elapsed, 2), "per_s": round(starts / elapsed, 1), "machine_busy_cores": busy,
            "cpu_ms_per_start": round(busy * elapsed * 1000 / starts, 3)}
