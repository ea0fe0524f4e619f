"""Two controller replicas on one PostgreSQL database against one (issue 9).

Each measurement runs on a fresh database, first with one replica, then with two
(alternating the order between rounds cancels the machine's drift):

- heartbeats: `nodes` simulated nodes (worker tokens, auth on) beat back to back from
  `concurrency` loops for `seconds`, spread over the replicas' addresses;
- dispatch: 4 real workers x 8 slots (with two replicas, two workers talk to each) run
  `jobs` no-op jobs submitted through the first replica.

Correctness is checked after each run, not assumed: every job completed exactly once
(one `completed` transition each in the audit log, none failed), no job was ever
assigned twice in one attempt, and no node was declared dead.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import peers
from bench.api import NOOP_SCENARIO, node_names
from bench.dispatch import DISPATCH_ENV, _wait_ready
from bench.farm import Controller, Workers, mint_tokens, percentiles
from bench.loadgen import LoadError, Pool


def _dead_count(db_url: str) -> int:
    """Nodes declared dead so far (not counting workers that drained: reason Released)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(
                "SELECT count(*) FROM audit_log WHERE event_type = 'node.transition' "
                "AND details->>'to' = 'dead' AND details->>'reason' <> 'Released'")).scalar_one())
    finally:
        engine.dispose()


def _audit_checks(db_url: str, jobs: int) -> dict[str, Any]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT entity_id, details FROM audit_log WHERE event_type = 'job.transition'")).all()
    finally:
        engine.dispose()
    completed: dict[str, int] = {}
    assigned: dict[tuple[str, int], int] = {}
    failed = 0
    for job, details in rows:
        to = details.get("to")
        if to == "completed":
            completed[job] = completed.get(job, 0) + 1
        elif to == "failed":
            failed += 1
        elif to == "assigned":
            key = (job, int(details.get("attempt", 0)))
            assigned[key] = assigned.get(key, 0) + 1
    return {"completed_once": sum(1 for n in completed.values() if n == 1),
            "completed_twice": sum(1 for n in completed.values() if n > 1),
            "jobs": jobs, "failed": failed,
            "assigned_twice_in_one_attempt": sum(1 for n in assigned.values() if n > 1),
            "nodes_declared_dead": _dead_count(db_url)}


async def _beat_load(urls: list[str], tokens: dict[str, str], concurrency: int,
                     seconds: float, db_url: str) -> dict[str, Any]:
    pools = [Pool(url, concurrency) for url in urls]
    names = list(tokens)
    body = {"slots": 4, "labels": {}, "running": []}
    try:
        # Register every node, then beat each once more: the first ones were silent while
        # the others registered (and may rightly have been declared dead meanwhile).
        gate = asyncio.Semaphore(concurrency)

        async def register(i: int, node: str) -> None:
            async with gate:
                answer = await pools[i % len(pools)].post(f"/nodes/{node}/heartbeat", body, tokens[node])
            if answer.status != 200:
                raise LoadError(f"registration: HTTP {answer.status}")

        for _ in range(2):
            await asyncio.gather(*(register(i, node) for i, node in enumerate(names)))
        await asyncio.sleep(1.0)  # a pass sees every node fresh
        before_load = _dead_count(db_url)
        latencies: list[float] = []
        errors = 0
        counter = iter(range(10**9))
        deadline = time.perf_counter() + seconds

        async def loop(pool: Pool) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                node = names[next(counter) % len(names)]
                began = time.perf_counter()
                try:
                    answer = await pool.post(f"/nodes/{node}/heartbeat", body, tokens[node])
                    errors += answer.status != 200
                except (LoadError, OSError):
                    errors += 1
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(loop(pools[i % len(pools)]) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        for pool in pools:
            pool.close()
    return {"per_s": round(len(latencies) / elapsed, 1), "errors": errors,
            "latency_ms": percentiles(latencies), "silent_while_registering": before_load}


def heartbeats(replicas: int, nodes: int, concurrency: int, seconds: float) -> dict[str, Any]:
    """Heartbeats per second from `nodes` simulated nodes across `replicas` controllers."""
    name, admin_engine = peers._pg_database()
    url = peers.pg_url(name)
    controllers: list[Controller] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-rep-") as tmp:
            _, tokens = mint_tokens(url, node_names(nodes))
            for _ in range(replicas):
                controller = Controller(url, Path(tmp), env={"FFRTMP_FAULT_TOLERANCE__NODE_TIMEOUT_SECONDS": "10"})
                controller.start()
                controllers.append(controller)
            result = asyncio.run(_beat_load([c.url for c in controllers], tokens, concurrency, seconds, url))
            for controller in controllers:
                controller.stop()
            result["nodes_declared_dead"] = _dead_count(url) - result["silent_while_registering"]
    finally:
        for controller in controllers:
            controller.stop()
        peers._drop(name, admin_engine)
    return {"replicas": replicas, "nodes": nodes, "concurrency": concurrency, **result}


async def _submit_and_wait(url: str, admin: str, jobs: int) -> float:
    async with Pool(url, 2) as pool:
        answer = await pool.post("/apply", {"items": [NOOP_SCENARIO]}, admin)
        if answer.status != 200:
            raise LoadError(f"scenario: HTTP {answer.status}")
        began = time.perf_counter()
        for start in range(0, jobs, 500):
            items = [{"apiVersion": "ffrtmp.io/v1", "kind": "Job", "metadata": {"name": f"rep-{i}"},
                      "spec": {"scenario": "noop", "maxRetries": 0}} for i in range(start, min(jobs, start + 500))]
            answer = await pool.post("/apply", {"items": items}, admin)
            if answer.status != 200:
                raise LoadError(f"apply: HTTP {answer.status}")
        deadline = time.monotonic() + max(120.0, jobs / 5)
        while time.monotonic() < deadline:
            stats = (await pool.get("/queue/stats", admin)).json()
            if stats["totalCompleted"] + stats["totalFailed"] >= jobs:
                return time.perf_counter() - began
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{jobs} jobs did not finish")


def dispatch(replicas: int, jobs: int, workers: int = 4, slots: int = 8) -> dict[str, Any]:
    """No-op jobs through real workers spread over `replicas` controllers on one database."""
    name, admin_engine = peers._pg_database()
    url = peers.pg_url(name)
    controllers: list[Controller] = []
    farms: list[Workers] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-rep-") as tmp:
            names = [f"w{i}" for i in range(workers)]
            admin, tokens = mint_tokens(url, names)
            for _ in range(replicas):
                controller = Controller(url, Path(tmp), env=DISPATCH_ENV)
                controller.start()
                controllers.append(controller)
            for i, controller in enumerate(controllers):
                mine = {n: t for j, (n, t) in enumerate(tokens.items()) if j % replicas == i}
                farm = Workers(controller.url, mine, slots, Path(tmp))
                farm.start()
                farms.append(farm)
            _wait_ready(controllers[0].url, admin, names)
            elapsed = asyncio.run(_submit_and_wait(controllers[0].url, admin, jobs))
            for farm in farms:
                farm.stop()
            for controller in controllers:
                controller.stop()
            checks = _audit_checks(url, jobs)
    finally:
        for farm in farms:
            farm.stop()
        for controller in controllers:
            controller.stop()
        peers._drop(name, admin_engine)
    return {"replicas": replicas, "jobs": jobs, "workers": workers, "slots": slots,
            "per_s": round(jobs / elapsed, 1), "checks": checks}


def run(nodes: int, concurrency: int, seconds: float, jobs: int, rounds: int) -> dict[str, Any]:
    """Alternating rounds of one and two replicas; the ratio of the medians (two / one)."""
    out: dict[str, Any] = {"heartbeats": {"1": [], "2": []}, "dispatch": {"1": [], "2": []}}
    for r in range(rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        for replicas in order:
            out["heartbeats"][str(replicas)].append(heartbeats(replicas, nodes, concurrency, seconds))
        for replicas in order:
            out["dispatch"][str(replicas)].append(dispatch(replicas, jobs))

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2] if len(ordered) % 2 else sum(ordered[len(ordered) // 2 - 1:][:2]) / 2

    for measure in ("heartbeats", "dispatch"):
        one = median([x["per_s"] for x in out[measure]["1"]])
        two = median([x["per_s"] for x in out[measure]["2"]])
        out[f"{measure}_ratio"] = round(two / one, 3) if one else None
    return out
