"""End-to-end dispatch of no-op jobs through real workers (issue 6), and the controller's memory.

Dispatch: 1 controller process, `workers` x `slots` real `ffrtmp worker` processes (the
lean entry point), SQLite. Two phases:
  - burst: `jobs` jobs of the `noop` scenario (argv `["true"]`: each one is a real
    process started by a worker) submitted through `POST /apply` in batches of 500;
    throughput = jobs / (first submission to last completion).
  - paced: `paced` jobs one by one at `rate`/s; submit-to-start = the job's
    `startedAt - createdAt` (both stamped by the controller).

Memory: a database seeded with N stored jobs (bench.reconcile's seed: mostly finished,
every node busy); the controller runs on it for a few passes, serves a page of jobs and
the queue stats; its peak RSS (VmHWM) is read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.api import NOOP_SCENARIO
from bench.farm import Controller, PeakMemory, Workers, mint_tokens, percentiles
from bench.machine import busy_cores, cpu_seconds, process_cpu_seconds, rss_kib
from bench.profile import recording

DISPATCH_ENV = {"FFRTMP_NODES__HEARTBEAT_INTERVAL_SECONDS": "2",
                "FFRTMP_FAULT_TOLERANCE__NODE_TIMEOUT_SECONDS": "30"}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


COUNTERS = ("ffrtmp_master_heartbeats_total", "ffrtmp_master_reconcile_duration_seconds_count",
            "ffrtmp_master_reconcile_duration_seconds_sum")


async def counters(client: httpx.AsyncClient) -> dict[str, float]:
    """The controller's heartbeat and reconcile-pass counters, from `GET /metrics`."""
    found = {}
    for line in (await client.get("/metrics")).text.splitlines():
        name, _, value = line.partition(" ")
        if name in COUNTERS:
            found[name.removeprefix("ffrtmp_master_")] = float(value)
    return found


def _delta(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    passes = after["reconcile_duration_seconds_count"] - before["reconcile_duration_seconds_count"]
    seconds = after["reconcile_duration_seconds_sum"] - before["reconcile_duration_seconds_sum"]
    return {"heartbeats_per_job": round((after["heartbeats_total"] - before["heartbeats_total"]) / jobs, 2),
            "reconcile_passes": int(passes), "reconcile_seconds": round(seconds, 2),
            "reconcile_ms_per_pass": round(seconds / max(passes, 1) * 1000, 1)}


async def _wait_done(client: httpx.AsyncClient, total: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = (await client.get("/queue/stats")).json()
        if stats["totalCompleted"] + stats["totalFailed"] >= total:
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"jobs not done in {timeout} s: {stats}")


async def _starts(client: httpx.AsyncClient, prefix: str) -> list[float]:
    delays = []
    cursor = None
    while True:
        page = (await client.get("/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})).json()
        for job in page["items"]:
            if job["name"].startswith(prefix) and job.get("startedAt"):
                delays.append(_ts(job["startedAt"]) - _ts(job["createdAt"]))
        cursor = page["next"]
        if cursor is None:
            return delays


async def _dispatch(url: str, admin: str, jobs: int, paced: int, rate: float, pid: int,
                    profile: Path | None, worker_pids: list[int]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {admin}"}) as client:
        (await client.post("/apply", json={"items": [NOOP_SCENARIO]})).raise_for_status()
        cpu0, wall0, ctl0 = cpu_seconds(), time.monotonic(), process_cpu_seconds(pid)
        workers0 = sum(process_cpu_seconds(p) for p in worker_pids)
        recorder = recording(pid, profile, 15) if profile else contextlib.nullcontext()
        recorder.__enter__()
        before = await counters(client)
        began = time.perf_counter()
        for start in range(0, jobs, 500):
            items = [{"apiVersion": "ffrtmp.io/v1", "kind": "Job", "metadata": {"name": f"burst-{i}"},
                      "spec": {"scenario": "noop", "maxRetries": 0}} for i in range(start, min(jobs, start + 500))]
            (await client.post("/apply", json={"items": items})).raise_for_status()
        submitted = time.perf_counter() - began
        done = await _wait_done(client, jobs, timeout=max(120.0, jobs / 5))
        elapsed = done - began
        # Read before the profiler is waited for: it samples for a fixed time, longer than
        # the burst, and the machine's busy cores would be averaged over that wait too.
        busy, ctl1 = busy_cores(cpu0, wall0), process_cpu_seconds(pid)
        workers1 = sum(process_cpu_seconds(p) for p in worker_pids)
        recorder.__exit__(None, None, None)
        burst = {"jobs": jobs, "submit_seconds": round(submitted, 2), "seconds": round(elapsed, 2),
                 "per_s": round(jobs / elapsed, 1), "machine_busy_cores": busy,
                 "controller_cpu_ms_per_job": round((ctl1 - ctl0) / jobs * 1000, 2),
                 # The worker processes and the jobs' own processes (`true`), reaped by them.
                 "workers_cpu_ms_per_job": round((workers1 - workers0) / jobs * 1000, 2),
                 "controller_work": _delta(before, await counters(client), jobs),
                 "submit_to_start_ms": percentiles(await _starts(client, "burst-"))}
        began = time.perf_counter()
        for i in range(paced):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            (await client.post("/jobs", json={"scenario": "noop", "name": f"paced-{i}", "maxRetries": 0})).raise_for_status()
        await _wait_done(client, jobs + paced, timeout=120)
        delays = await _starts(client, "paced-")
        stats = (await client.get("/queue/stats")).json()
    return {"burst": burst,
            "paced": {"jobs": paced, "rate_per_s": rate, "submit_to_start_ms": percentiles(delays),
                      "samples_ms": [round(x * 1000, 2) for x in delays]},
            "failed": stats["totalFailed"]}


def dispatch(jobs: int, paced: int, rate: float, workers: int = 4, slots: int = 8,
             db_url: str | None = None, profile: Path | None = None) -> dict[str, Any]:
    """No-op jobs through real workers: throughput and submit-to-start."""
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-disp-") as tmp:
        url = db_url or f"sqlite:///{tmp}/bench.db"
        names = [f"w{i}" for i in range(workers)]
        admin, tokens = mint_tokens(url, names)
        controller = Controller(url, Path(tmp), env=DISPATCH_ENV)
        controller.start()
        farm = Workers(controller.url, tokens, slots, Path(tmp))
        try:
            farm.start()
            _wait_ready(controller.url, admin, names)
            result = asyncio.run(_dispatch(controller.url, admin, jobs, paced, rate, controller.pid, profile,
                                           [p.pid for p in farm.processes]))
        finally:
            farm.stop()
            controller.stop()
    return {"workers": workers, "slots": slots, "database": url.split(":", 1)[0], "auth": "on",
            **result}


def _wait_ready(url: str, admin: str, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}) as client:
        while time.monotonic() < deadline:
            ready = {n["name"] for n in client.get("/nodes", params={"status": "ready"}).json()["items"]}
            if set(names) <= ready:
                return
            time.sleep(0.2)
    raise RuntimeError("workers did not register")


def memory(stored_jobs: int, nodes: int, db_url: str | None = None, seeded: bool = False) -> dict[str, Any]:
    """Peak RSS of the controller over a database holding `stored_jobs` jobs."""
    from bench.reconcile import seed_database
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-mem-") as tmp:
        url = db_url or f"sqlite:///{tmp}/bench.db"
        if not seeded:
            seed_database(url, stored_jobs, nodes)
        admin, _ = mint_tokens(url, [])
        controller = Controller(url, Path(tmp), env={"FFRTMP_FAULT_TOLERANCE__NODE_TIMEOUT_SECONDS": "100000"})
        began = time.perf_counter()
        controller.start(timeout=300)
        startup = time.perf_counter() - began
        try:
            sampler = PeakMemory(controller.pid)
            with sampler.watching(), httpx.Client(base_url=controller.url, timeout=120,
                                                  headers={"Authorization": f"Bearer {admin}"}) as client:
                idle_kib = rss_kib(controller.pid)["rss_kib"]
                time.sleep(2.5)  # a few reconcile passes
                client.get("/queue/stats").raise_for_status()
                client.get("/jobs", params={"limit": 1000}).raise_for_status()
                client.get("/nodes", params={"limit": 1000}).raise_for_status()
                client.get("/metrics").raise_for_status()
            kernel = rss_kib(controller.pid)
        finally:
            controller.stop()
    return {"stored_jobs": stored_jobs, "nodes": nodes, "startup_seconds": round(startup, 2),
            "rss_after_start_mib": round(idle_kib / 1024, 1),
            "peak_rss_mib": round(max(kernel["peak_rss_kib"], sampler.peak_kib) / 1024, 1)}
