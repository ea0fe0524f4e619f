"""Reconcile-pass benchmark (issue 3 targets).

    python -m bench.reconcile            # full: 1,000,000 jobs, 10,000 nodes
    python -m bench.reconcile --quick    # smoke: 20,000 jobs, 1,000 nodes
    python -m bench.reconcile --db postgresql+psycopg://postgres@127.0.0.1/bench

Measures, on one database seeded in bulk:
  1. a pass when nothing changed (mostly finished jobs, every node busy and fresh);
  2. a pass that schedules N pending jobs onto free slots;
  3. a pass that finds 10% of the nodes dead and requeues their running jobs.
Prints JSON; `--out FILE` also writes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from controller.config import ControllerConfig, load_config
from controller.domain.states import Priority
from controller.reconcile import Reconciler
from controller.store.engine import Store
from controller.store.migrate import upgrade
from controller.store.models import Job, JobAttempt, Node, Scenario

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CHUNK = 20_000


def _insert(store: Store, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with store.write() as session:
        for start in range(0, len(rows), CHUNK):
            session.execute(sa.insert(table), rows[start:start + CHUNK])


def seed(store: Store, jobs: int, nodes: int, dead_fraction: float) -> dict[str, int]:
    """Nodes (one running job each, fresh), the rest of the jobs completed."""
    nodes_t: sa.Table = Node.__table__  # type: ignore[attr-defined]
    jobs_t: sa.Table = Job.__table__  # type: ignore[attr-defined]
    scenarios_t: sa.Table = Scenario.__table__  # type: ignore[attr-defined]
    old = NOW - timedelta(days=1)
    _insert(store, scenarios_t, [{
        "name": "noop", "command": ["true"], "defaults": {}, "expected_duration_seconds": 3600.0,
        "requires": {}, "labels": {}, "source": "api", "source_path": None, "spec_hash": "x",
        "created_at": old, "updated_at": old,
    }])
    dead = int(nodes * dead_fraction)
    per_dead_node = 10
    node_rows = []
    for i in range(nodes):
        is_dead = i < dead
        node_rows.append({
            "name": f"node-{i:05d}", "status": "ready", "slots": per_dead_node if is_dead else 1,
            "labels": {}, "reported_labels": {}, "unschedulable": False, "declared": False,
            # Nodes to die stopped beating 61 s before the third measurement.
            "last_heartbeat": NOW if not is_dead else NOW - timedelta(seconds=1),
            "status_changed_at": old, "source": "heartbeat", "source_path": None, "spec_hash": None,
            "created_at": old, "updated_at": old,
        })
    _insert(store, nodes_t, node_rows)
    base = {
        "scenario_name": "noop", "parameters": {}, "priority": Priority.MEDIUM.rank, "reason": None,
        "message": None, "retry_count": 0, "max_retries": None, "expected_duration_seconds": None,
        "active_deadline_seconds": None, "node_selector": {}, "suspend": False, "fail_on_exit_codes": [],
        "labels": {}, "source": "api", "source_path": None, "spec_hash": "x", "updated_at": old,
        "not_before": None,
    }
    rows = []
    running = 0
    for i in range(nodes):
        for _ in range(per_dead_node if i < dead else 1):
            rows.append({**base, "name": f"run-{running:07d}", "status": "running", "node_id": i + 1,
                         "attempt": 1, "created_at": old, "assigned_at": old, "started_at": old,
                         "finished_at": None, "timeout_at": old + timedelta(days=30)})
            running += 1
    for i in range(max(jobs - running, 0)):
        rows.append({**base, "name": f"done-{i:07d}", "status": "completed", "node_id": (i % nodes) + 1,
                     "attempt": 1, "created_at": old, "assigned_at": old, "started_at": old,
                     "finished_at": old, "timeout_at": None})
    _insert(store, jobs_t, rows)
    attempts_t: sa.Table = JobAttempt.__table__  # type: ignore[attr-defined]
    with store.read() as session:
        running_ids = session.execute(
            sa.select(jobs_t.c.id, jobs_t.c.node_id).where(jobs_t.c.status == "running")
        ).all()
    _insert(store, attempts_t, [
        {"job_id": r.id, "attempt": 1, "node_name": f"node-{r.node_id - 1:05d}", "status": "running",
         "assigned_at": old, "started_at": old} for r in running_ids
    ])
    return {"nodes": nodes, "running": running, "completed": max(jobs - running, 0), "dead_nodes": dead}


def add_pending(store: Store, count: int) -> None:
    jobs_t: sa.Table = Job.__table__  # type: ignore[attr-defined]
    nodes_t: sa.Table = Node.__table__  # type: ignore[attr-defined]
    rows = [{
        "name": f"pend-{i:07d}", "scenario_name": "noop", "parameters": {}, "status": "pending",
        "priority": list(Priority)[i % 5].rank, "attempt": 0, "retry_count": 0, "node_selector": {},
        "suspend": False, "fail_on_exit_codes": [], "labels": {}, "source": "api", "spec_hash": "x",
        "created_at": NOW - timedelta(seconds=count - i), "updated_at": NOW,
    } for i in range(count)]
    _insert(store, jobs_t, rows)
    # Room for them: every live node gets one more slot per pending job, spread evenly.
    with store.write() as session:
        live = session.execute(sa.select(sa.func.count()).select_from(nodes_t)
                               .where(nodes_t.c.slots == 1)).scalar_one()
        extra = -(-count // max(live, 1))
        session.execute(sa.update(nodes_t).where(nodes_t.c.slots == 1).values(slots=1 + extra))


def seed_database(url: str, jobs: int, nodes: int) -> dict[str, int]:
    """A migrated database at `url` seeded like the benchmark's (used by the memory figure too)."""
    config = load_config(env={}, overrides={"database": {"url": url}})
    store = Store.from_config(config.database)
    try:
        upgrade(store)
        seeded = seed(store, jobs, nodes, dead_fraction=0.1)
        with store.write() as session:
            session.execute(sa.text("ANALYZE"))
    finally:
        store.dispose()
    return seeded


def timed(reconciler: Reconciler, now: datetime, repeat: int = 1) -> tuple[list[float], Any]:
    times = []
    result = None
    for _ in range(repeat):
        began = time.perf_counter()
        result = reconciler.reconcile(now)
        times.append(time.perf_counter() - began)
    return times, result


def run(url: str, jobs: int, nodes: int, pending: int) -> dict[str, Any]:
    config = load_config(env={}, overrides={"database": {"url": url}})
    store = Store.from_config(config.database)
    upgrade(store)
    began = time.perf_counter()
    seeded = seed(store, jobs, nodes, dead_fraction=0.1)
    seed_seconds = time.perf_counter() - began
    with store.write() as session:  # fresh statistics for the planner
        session.execute(sa.text("ANALYZE"))
    # As the controller process runs it: WAL checkpoints in a thread, not inside commits.
    store.start_checkpoints(config.database.sqlite_checkpoint_seconds)
    reconciler = Reconciler(store, ControllerConfig(), started_at=NOW - timedelta(hours=1))

    steady, _ = timed(reconciler, NOW, repeat=7)
    add_pending(store, pending)
    sched, sched_result = timed(reconciler, NOW)
    # Every node beats again except the doomed tenth, then 61 s pass.
    later = NOW + timedelta(seconds=61)
    nodes_t: sa.Table = Node.__table__  # type: ignore[attr-defined]
    with store.write() as session:
        session.execute(sa.update(nodes_t).where(nodes_t.c.last_heartbeat == NOW).values(last_heartbeat=later))
    dead, dead_result = timed(reconciler, later)
    store.dispose()
    return {
        "seeded": seeded,
        "seed_seconds": round(seed_seconds, 2),
        "steady_pass_ms": {"median": round(statistics.median(steady) * 1000, 2),
                           "min": round(min(steady) * 1000, 2)},
        "schedule_pass": {"jobs": len(sched_result.scheduled), "seconds": round(sched[0], 3)},
        "dead_nodes_pass": {"dead": len(dead_result.dead_nodes), "requeued": len(dead_result.requeued),
                            "seconds": round(dead[0], 3)},
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print (and optionally write) its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--db", help="database URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # one line per dead node would dominate the output
    jobs, nodes, pending = (20_000, 1_000, 1_000) if args.quick else (1_000_000, 10_000, 10_000)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{tmp}/bench.db"
        figures = run(url, jobs, nodes, pending)
    report = {
        "benchmark": "reconcile",
        "mode": "quick" if args.quick else "full",
        "database": url.split(":", 1)[0] if args.db else "sqlite (synchronous=normal, WAL)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "targets": {"steady_pass_ms": 50, "schedule_10k_seconds": 1.0, "requeue_1000_dead_nodes_seconds": 2.0},
        **figures,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
