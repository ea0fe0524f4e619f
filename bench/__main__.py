"""`python -m bench`: every benchmark of issue 8 in one run, written to docs/benchmarks/.

    python -m bench --quick                    # smoke sizes, under 2 minutes (what CI runs)
    python -m bench                            # the issues' sizes, scaled where noted (~20 min)
    python -m bench --only dispatch peers      # some suites only
    python -m bench --profile                  # also py-spy profiles of the missed targets

Suites (in this order; ours and the peers alternate, round after round):
  api        heartbeats vs simulated nodes, submissions (one by one, POST /apply), delivery
  dispatch   no-op jobs through real workers, rounds alternating with the peers:
  peers      huey SqliteHuey, procrastinate (PostgreSQL), raw sqlite3 claim-and-complete,
             starting `true` with nothing around it (the limit of a process per job)
  replicas   two controllers on one PostgreSQL database vs one (heartbeats, dispatch)
  reconcile  the reconcile pass vs stored jobs/nodes (bench/reconcile.py)
  memory     the controller's peak RSS vs stored jobs
  gitops     the watched directory (bench/gitops.py)

Writes results-{quick,full}.json (figures, machine, versions, durability, load average
before/after each suite), results-{mode}.md (the targets table) and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import api, dispatch, machine, peers
from bench import gitops as gitops_bench
from bench import reconcile as reconcile_bench
from bench import replicas as replicas_bench

SUITES = ("api", "dispatch", "peers", "replicas", "reconcile", "memory", "gitops")

SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "heartbeat_nodes": [100], "heartbeat_rate": 200, "heartbeat_seconds": 2,
        "one_by_one": 50, "apply_batches": 2, "apply_batch": 200, "delivery": 10,
        "dispatch_jobs": 60, "paced_jobs": 10, "paced_rate": 10, "rounds": 1,
        "huey_tasks": 200, "procrastinate_jobs": 200, "raw_jobs": 2000, "spawn_starts": 500, "pg_dispatch_jobs": 0,
        "scale_workers": [1], "scale_jobs_per_worker": 60, "scale_tasks_per_consumer": 100,
        "replicas": (50, 16, 2, 60, 1), "reconcile": (20_000, 1_000, 1_000), "reconcile_scales": [(2_000, 100, 100)],
        "memory_jobs": [],
        "gitops": (10, 10),
    },
    "full": {
        "heartbeat_nodes": [100, 1000, 10_000], "heartbeat_rate": 2000, "heartbeat_seconds": 10,
        "one_by_one": 3000, "apply_batches": 20, "apply_batch": 1000, "delivery": 100,
        "dispatch_jobs": 3000, "paced_jobs": 100, "paced_rate": 10, "rounds": 2,
        "huey_tasks": 5000, "procrastinate_jobs": 3000, "raw_jobs": 20000, "spawn_starts": 6000,
        "pg_dispatch_jobs": 300,
        "scale_workers": [1, 2, 4], "scale_jobs_per_worker": 750, "scale_tasks_per_consumer": 1000,
        "replicas": (1000, 32, 10, 600, 2), "reconcile": (1_000_000, 10_000, 10_000),
        "reconcile_scales": [(10_000, 100, 100), (100_000, 1_000, 1_000)],
        "memory_jobs": [10_000, 100_000],
        "gitops": (1000, 100),
    },
}


class Run:
    """One `python -m bench` run: its figures, written as they arrive."""

    def __init__(self, mode: str, out: Path, profile: bool) -> None:
        self.mode = mode
        self.out = out
        self.profile_dir = out / "profiles" if profile else None
        self.sizes = SIZES[mode]
        self.data: dict[str, Any] = {
            "mode": mode, "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine.describe(), "versions": machine.versions(),
            "durability": {"ours_sqlite": machine.SQLITE_DURABILITY, "huey": machine.SQLITE_DURABILITY,
                           "raw_sqlite3": machine.SQLITE_DURABILITY, "postgresql": machine.PG_DURABILITY},
            "auth": "on: worker tokens per node for the worker protocol, an admin token for the rest",
            "suites": {}, "errors": {},
        }

    def suite(self, name: str, body: Callable[[], Any]) -> None:
        """Run one suite, recording its figures, duration and the load around it."""
        print(f"== {name}", flush=True)
        before = machine.load()
        began = time.monotonic()
        try:
            figures = body()
        except Exception as exc:  # a failing suite is reported, the others still run
            traceback.print_exc()
            self.data["errors"][name] = f"{type(exc).__name__}: {exc}"
            return
        self.data["suites"][name] = {"seconds": round(time.monotonic() - began, 1), "load_before": before,
                                     "load_after": machine.load(), "figures": figures}
        self.save()

    def profile_path(self, name: str) -> Path | None:
        """Where a suite writes its py-spy stacks (None: no profiling this run)."""
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return self.profile_dir / f"{name}.raw"

    def save(self) -> None:
        """Write the JSON so far."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"results-{self.mode}.json").write_text(json.dumps(self.data, indent=1) + "\n")


def run_api(run: Run) -> dict[str, Any]:
    s = run.sizes
    beats = [api.heartbeats(n, s["heartbeat_rate"], s["heartbeat_seconds"],
                            profile=run.profile_path(f"heartbeats-{n}")) for n in s["heartbeat_nodes"]]
    for b in beats:
        b["paced"]["samples_ms"] = b["paced"]["samples_ms"][:2000]
    return {"heartbeats": beats,
            "submissions": api.submissions(s["one_by_one"], s["apply_batches"], s["apply_batch"]),
            "delivery": api.delivery(s["delivery"])}


def run_dispatch_and_peers(run: Run, with_peers: bool) -> dict[str, Any]:
    """Rounds of: ours (SQLite), huey noop, raw sqlite3, huey spawn, `true` alone, procrastinate,
    ours (PostgreSQL)."""
    s = run.sizes
    rounds: list[dict[str, Any]] = []
    for r in range(s["rounds"]):
        this: dict[str, Any] = {}
        this["ours_sqlite"] = dispatch.dispatch(s["dispatch_jobs"], s["paced_jobs"], s["paced_rate"],
                                                profile=run.profile_path("dispatch") if r == 0 else None)
        if with_peers:
            this["huey_noop"] = _attempt(lambda: peers.huey(s["huey_tasks"], "noop"))
            this["raw_sqlite3"] = _attempt(lambda: peers.raw_sqlite(s["raw_jobs"]))
            this["huey_spawn_true"] = _attempt(lambda: peers.huey(max(s["huey_tasks"] // 5, 100), "spawn_true"))
            this["spawn_true_limit"] = _attempt(lambda: peers.spawn_limit(s["spawn_starts"]))
            this["procrastinate"] = _attempt(lambda: peers.procrastinate(s["procrastinate_jobs"]))
            if s["pg_dispatch_jobs"]:
                this["ours_postgresql"] = _attempt(lambda: _ours_on_postgresql(s["pg_dispatch_jobs"]))
        rounds.append(this)
        print(f"   round {r + 1}: " + ", ".join(f"{k} {v.get('burst', v).get('per_s')}/s" for k, v in this.items()),
              flush=True)
    return {"rounds": rounds, "scale": _dispatch_scale(run) if with_peers else []}


def _dispatch_scale(run: Run) -> list[dict[str, Any]]:
    """Ours and huey with 1, 2, 4 workers (consumers) of 8 slots (threads), jobs per worker fixed."""
    s = run.sizes
    points = []
    for w in s["scale_workers"]:
        jobs, tasks = s["scale_jobs_per_worker"] * w, s["scale_tasks_per_consumer"] * w
        point: dict[str, Any] = {"workers": w, "slots": 8}
        for name, body in (
            ("ours_sqlite", partial(dispatch.dispatch, jobs, 0, 1, workers=w)),
            ("huey_noop", partial(peers.huey, tasks, "noop", consumers=w)),
            ("huey_spawn_true", partial(peers.huey, max(tasks // 5, 100), "spawn_true", consumers=w)),
        ):
            result = _attempt(body)
            point[name] = result.get("burst", result).get("per_s")
        points.append(point)
        print(f"   scale {w} worker(s): " + ", ".join(f"{k} {v}/s" for k, v in point.items()
                                                      if k not in ("workers", "slots")), flush=True)
    return points


def _attempt(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One measurement; its error recorded in its place instead of losing the round."""
    try:
        return body()
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def _ours_on_postgresql(jobs: int) -> dict[str, Any]:
    name, admin = peers._pg_database()
    try:
        return dispatch.dispatch(jobs, 0, 1, db_url=peers.pg_url(name))
    finally:
        peers._drop(name, admin)


def run_reconcile_and_memory(run: Run, do_reconcile: bool, do_memory: bool) -> None:
    jobs, nodes, pending = run.sizes["reconcile"]
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-rec-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        if do_reconcile:
            def reconcile() -> dict[str, Any]:
                # Smaller farms first, each on a database of its own (issue 8: the pass vs
                # stored jobs and nodes); the largest is the issue-3 measurement.
                scales = []
                for j, n, p in run.sizes["reconcile_scales"]:
                    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-rec-") as small:
                        scales.append({"jobs": j, "nodes": n, "pending": p,
                                       **reconcile_bench.run(f"sqlite:///{small}/bench.db", j, n, p)})
                largest = {"jobs": jobs, "nodes": nodes, "pending": pending,
                           **reconcile_bench.run(url, jobs, nodes, pending)}
                return {**largest, "scales": [*scales, largest]}
            run.suite("reconcile", reconcile)
        if do_memory:
            def memory() -> list[dict[str, Any]]:
                points = [dispatch.memory(n, max(n // 100, 10)) for n in run.sizes["memory_jobs"]]
                if do_reconcile and "reconcile" in run.data["suites"]:
                    points.append(dispatch.memory(jobs + pending, nodes, db_url=url, seeded=True))
                else:
                    points.append(dispatch.memory(jobs, nodes))
                return points
            run.suite("memory", memory)


def summarize_profiles(folder: Path) -> None:
    """Each py-spy stack file as a short text summary beside it (the raw stacks are dropped)."""
    from bench.profile import as_text, summarize
    for raw in sorted(folder.glob("*.raw")):
        raw.with_suffix(".txt").write_text(as_text(summarize(raw.read_text(), 40), 40) + "\n")
        raw.unlink()


def main(argv: list[str] | None = None) -> int:
    """Run the suites, write JSON, the Markdown table and the plots."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke sizes (under 2 minutes)")
    parser.add_argument("--only", nargs="+", choices=SUITES, help="run only these suites")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--profile", action="store_true", help="py-spy profiles (needs py-spy, root or ptrace)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    # A SIGTERM unwinds like an error, so every suite's `finally` stops the processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = set(args.only or SUITES)
    run = Run("quick" if args.quick else "full", args.out, args.profile)
    earlier = args.out / f"results-{run.mode}.json"
    if args.only and earlier.exists():  # keep the other suites' figures, say which were run again
        previous = json.loads(earlier.read_text())
        run.data["suites"] = previous.get("suites", {})
        run.data["rerun"] = {"suites": sorted(chosen), "at": run.data["started"], "first_run": previous["started"]}
        run.data["started"] = previous["started"]
    began = time.monotonic()
    if "api" in chosen:
        run.suite("api", lambda: run_api(run))
    if "dispatch" in chosen or "peers" in chosen:
        run.suite("dispatch_and_peers", lambda: run_dispatch_and_peers(run, "peers" in chosen))
    if "replicas" in chosen:
        nodes, concurrency, seconds, jobs, rounds = run.sizes["replicas"]
        run.suite("replicas", lambda: replicas_bench.run(nodes, concurrency, seconds, jobs, rounds))
    if "reconcile" in chosen or "memory" in chosen:
        run_reconcile_and_memory(run, "reconcile" in chosen, "memory" in chosen)
    if "gitops" in chosen:
        files, per_file = run.sizes["gitops"]
        run.suite("gitops", lambda: gitops_bench.run(files, per_file, None))
    run.data["seconds"] = round(time.monotonic() - began, 1)
    run.save()
    if run.profile_dir is not None:
        summarize_profiles(run.profile_dir)
    from bench import report
    report.write(run.data, args.out)
    print(f"wrote {args.out}/results-{run.mode}.json, .md and plots in {run.data['seconds']} s")
    return 1 if run.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
