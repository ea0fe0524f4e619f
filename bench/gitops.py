"""Benchmark of the watched directory (issue 5's speed targets).

Builds FILES files x JOBS Jobs (plus a few Scenarios) in a temporary directory and
measures, through `DirectorySource`:

- the initial apply into an empty database (target: 100,000 jobs in < 30 s);
- a full resync that finds no change (target: < 2 s);
- a one-file change, from the write to the change being visible in the database,
  with the real observer and a loop that syncs when woken (target: < 1 s).

    python bench/gitops.py                      # 1,000 files x 100 jobs, SQLite file
    python bench/gitops.py --files 10 --jobs 5  # a smoke run
    python bench/gitops.py --db postgresql+psycopg://postgres@127.0.0.1:5432/bench

Prints a markdown table and, with --json, the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from controller.config import ControllerConfig, DatabaseConfig, load_config
from controller.sources.directory import DirectorySource
from controller.store.engine import Store
from controller.store.migrate import upgrade
from controller.store.transitions import jobs_t

SCENARIOS = 10


def scenario_doc(index: int) -> str:
    """One Scenario manifest."""
    return (
        "apiVersion: ffrtmp.io/v1\n"
        "kind: Scenario\n"
        f"metadata: {{name: bench-scenario-{index}}}\n"
        "spec:\n"
        "  command: [ffmpeg, -f, lavfi, -i, \"testsrc2=size={resolution}:rate={fps}\",\n"
        "            -t, \"{duration}\", -f, \"null\", \"-\"]\n"
        "  defaults: {resolution: 1280x720, fps: 30, duration: 10}\n"
        "  expectedDurationSeconds: 30\n"
    )


def job_doc(file_index: int, job_index: int, priority: str = "medium") -> str:
    """One Job manifest, the shape of the spec's example."""
    return (
        "apiVersion: ffrtmp.io/v1\n"
        "kind: Job\n"
        "metadata:\n"
        f"  name: bench-{file_index:04d}-{job_index:03d}\n"
        f"  labels: {{team: team-{file_index % 7}}}\n"
        "spec:\n"
        f"  scenario: bench-scenario-{file_index % SCENARIOS}\n"
        f"  parameters: {{resolution: 1920x1080, seed: {job_index}}}\n"
        f"  priority: {priority}\n"
        "  maxRetries: 3\n"
    )


def write_tree(root: Path, files: int, jobs: int) -> None:
    """FILES job files in 10 folders, and one file of Scenarios."""
    (root / "scenarios.yaml").write_text("---\n".join(scenario_doc(i) for i in range(SCENARIOS)))
    for f in range(files):
        folder = root / f"team-{f % 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"jobs-{f:04d}.yaml").write_text("---\n".join(job_doc(f, j) for j in range(jobs)))


def job_priority(store: Store, name: str) -> int | None:
    """The stored priority rank of one job."""
    with store.read() as session:
        value = session.execute(sa.select(jobs_t.c.priority).where(jobs_t.c.name == name)).scalar()
    return int(value) if value is not None else None


def count_jobs(store: Store) -> int:
    """Jobs in the database."""
    with store.read() as session:
        return int(session.execute(sa.select(sa.func.count()).select_from(jobs_t)).scalar_one())


def one_file_change(store: Store, source: DirectorySource, root: Path, jobs: int) -> float:
    """Seconds from rewriting one file to its change being in the database, observer on."""
    woken = threading.Event()
    source.on_change = woken.set
    stop = threading.Event()

    def loop() -> None:  # what the reconcile loop does: sync when woken
        while not stop.is_set():
            if woken.wait(0.05):
                woken.clear()
                source.sync(datetime.now(UTC))

    thread = threading.Thread(target=loop, daemon=True)
    source.start()
    thread.start()
    try:
        time.sleep(0.2)  # let the observer settle its watches before the write
        path = root / "team-3" / "jobs-0003.yaml"
        began = time.perf_counter()
        path.write_text("---\n".join(job_doc(3, j, "live" if j == 0 else "medium") for j in range(jobs)))
        while job_priority(store, "bench-0003-000") != 4:
            if time.perf_counter() - began > 10:
                raise RuntimeError("the change never arrived")
            time.sleep(0.005)
        return time.perf_counter() - began
    finally:
        stop.set()
        thread.join()
        source.stop()


def run(files: int, jobs: int, db: str | None) -> dict[str, Any]:
    """Build the tree, run the three measures, return the figures."""
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-") as tmp:
        root = Path(tmp) / "manifests"
        root.mkdir()
        write_tree(root, files, jobs)
        url = db or f"sqlite:///{tmp}/bench.db"
        store = Store.from_config(DatabaseConfig(url=url))
        upgrade(store)
        config: ControllerConfig = load_config(env={}, overrides={"database": {"url": url}})
        source = DirectorySource(store, config, root=root)
        try:
            began, cpu_began = time.perf_counter(), time.process_time()
            first = source.sync(datetime.now(UTC))
            initial = time.perf_counter() - began
            initial_cpu = time.process_time() - cpu_began
            stored = count_jobs(store)
            began = time.perf_counter()
            again = source.sync(datetime.now(UTC), force=True)
            resync = time.perf_counter() - began
            change = one_file_change(store, source, root, jobs)
        finally:
            store.dispose()
    return {
        "files": files + 1,
        "jobs": files * jobs,
        "scenarios": SCENARIOS,
        "database": store.dialect,
        "initial_apply_seconds": round(initial, 3),
        # This process's CPU time: on a shared machine, steadier than the wall clock.
        "initial_apply_cpu_seconds": round(initial_cpu, 3),
        "jobs_in_database": stored,
        "initial_counts": first.counts,
        "noop_resync_seconds": round(resync, 3),
        "noop_resync_files_read": again.read,
        "noop_resync_counts": again.counts,
        "one_file_change_seconds": round(change, 3),
    }


def markdown(result: dict[str, Any]) -> str:
    """The figures against the targets."""
    rows = [
        ("initial apply", result["initial_apply_seconds"], 30.0),
        ("no-change resync", result["noop_resync_seconds"], 2.0),
        ("one-file change visible", result["one_file_change_seconds"], 1.0),
    ]
    lines = [
        f"{result['jobs']} jobs in {result['files']} files, {result['database']}",
        "",
        "| measure | seconds | target | |",
        "|---|---:|---:|---|",
    ]
    for name, seconds, target in rows:
        lines.append(f"| {name} | {seconds:.3f} | < {target:g} | {'ok' if seconds < target else 'SLOW'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100, help="jobs per file")
    parser.add_argument("--db", help="database URL (default: a SQLite file in the temp dir)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.files, args.jobs, args.db)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
