"""The worker protocol and the submission routes against a real controller process (issue 4).

- heartbeats: N simulated nodes (each with its own worker token, auth on) beat
  (a) paced: an offered rate of `rate`/s spread over the nodes for `seconds`, latency
      measured from the *scheduled* send time (no coordinated omission);
  (b) saturated: `concurrency` loops beating back to back.
  Node timeout is 5 s during the run: any node declared dead is a false death.
- submissions: `POST /jobs` one by one (1 and 16 in flight), and `POST /apply` in
  batches of 1,000 jobs (JSON).
- delivery: an idle node long-polls; a job is submitted; the time until its long-poll
  answers with the assignment (issue 4: p50 < 20 ms, p99 < 100 ms).

The load generator is one asyncio process speaking HTTP/1.1 on kept-alive
connections (`bench.loadgen`: tens of microseconds per request, where httpx spent
about a millisecond); its own CPU use is recorded, since on 2 cores it competes
with the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.farm import Controller, mint_tokens, percentiles
from bench.loadgen import Answer, LoadError, Pool
from bench.machine import busy_cores, cpu_seconds, process_cpu_seconds
from bench.profile import recording

NOOP_SCENARIO = {"apiVersion": "ffrtmp.io/v1", "kind": "Scenario", "metadata": {"name": "noop"},
                 "spec": {"command": ["true"], "defaults": {}}}
def heartbeat_env(nodes: int, rate: float) -> dict[str, str]:
    """The controller's node (and assignment) timeout: 5 s, or three of a node's beat periods.

    At 2,000 beats/s, 1,000 nodes beat every 0.5 s each and 5 s is ten periods; 10,000
    nodes beat every 5 s each, and a 5 s timeout would declare dead nodes that beat on
    time: 15 s there.
    """
    timeout = max(5.0, 3 * nodes / rate)
    return {"FFRTMP_FAULT_TOLERANCE__NODE_TIMEOUT_SECONDS": f"{timeout:g}",
            "FFRTMP_FAULT_TOLERANCE__ASSIGN_TIMEOUT_SECONDS": f"{timeout:g}"}


def _ok(answer: Answer) -> Answer:
    if answer.status >= 400:
        raise LoadError(f"HTTP {answer.status}: {answer.body[:300]!r}")
    return answer


def node_names(count: int) -> list[str]:
    """`sim-00000`, `sim-00001`, ..."""
    return [f"sim-{i:05d}" for i in range(count)]


async def _beat(client: Pool, node: str, token: str) -> int:
    response = await client.post(f"/nodes/{node}/heartbeat", {"slots": 4, "labels": {}, "running": []}, token)
    return response.status


async def _paced(client: Pool, tokens: dict[str, str], rate: float, seconds: float,
                 max_in_flight: int) -> dict[str, Any]:
    names = list(tokens)
    latencies: list[float] = []
    errors = 0
    dropped = 0
    in_flight = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()

    answered = 0

    async def one(node: str, scheduled: float) -> None:
        nonlocal errors, answered
        try:
            status = await _beat(client, node, tokens[node])
            if status != 200:
                errors += 1
            else:
                answered += 1
            latencies.append(time.perf_counter() - scheduled)
        except (LoadError, OSError):
            errors += 1
        finally:
            in_flight.release()

    count = int(rate * seconds)
    began = time.perf_counter()
    for i in range(count):
        scheduled = began + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight.locked():
            dropped += 1  # the controller is this far behind: counted, not sent
            continue
        await in_flight.acquire()
        task = asyncio.create_task(one(names[i % len(names)], scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    # Sustained: beats answered per second of the sending window (count / rate seconds).
    # It is the offered rate exactly when every beat was sent and answered; the time the
    # last answers take to come back after the window is not counted against it.
    return {"offered_per_s": rate, "seconds": round(elapsed, 2), "sent": count - dropped, "dropped": dropped,
            "errors": errors, "achieved_per_s": round(answered / (count / rate), 1),
            "latency_ms": percentiles(latencies), "samples_ms": [round(x * 1000, 2) for x in latencies[::max(1, len(latencies) // 2000)]]}


async def _saturated(client: Pool, tokens: dict[str, str], concurrency: int,
                     seconds: float) -> dict[str, Any]:
    names = list(tokens)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def loop() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            node = names[next(counter) % len(names)]
            began = time.perf_counter()
            try:
                if await _beat(client, node, tokens[node]) != 200:
                    errors += 1
            except (LoadError, OSError):
                errors += 1
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return {"concurrency": concurrency, "seconds": round(elapsed, 2), "errors": errors,
            "per_s": round(len(latencies) / elapsed, 1), "latency_ms": percentiles(latencies)}


async def _dead_nodes(client: Pool, admin: str) -> int:
    """How many times a node was declared dead so far (every page of the audit log)."""
    dead = 0
    cursor = ""
    while True:
        page = (await client.get(f"/audit?eventType=node.transition&limit=1000{cursor}", admin)).json()
        dead += sum(1 for e in page["items"] if e["details"].get("to") == "dead")
        if not page.get("next"):
            return dead
        cursor = f"&cursor={page['next']}"


async def _heartbeats(url: str, admin: str, tokens: dict[str, str], rate: float, seconds: float,
                      concurrency: int, pid: int, profile: Path | None) -> dict[str, Any]:
    async with Pool(url, 256) as client:
        # Register every node first (the first heartbeat creates it).
        sem = asyncio.Semaphore(32)

        async def register(node: str) -> None:
            async with sem:
                await _beat(client, node, tokens[node])

        began = time.perf_counter()
        await asyncio.gather(*(register(n) for n in tokens))
        registration = time.perf_counter() - began
        # Nodes registered first were silent while the others registered: with 1,000
        # nodes that can outlast the 5 s node timeout, and they are rightly declared dead.
        # One more beat each brings them back; deaths are counted from here on.
        await asyncio.gather(*(register(n) for n in tokens))
        await asyncio.sleep(1.0)  # a pass sees every node fresh
        before_load = await _dead_nodes(client, admin)
        cpu0, wall0, own0 = cpu_seconds(), time.monotonic(), time.process_time()
        paced = await _paced(client, tokens, rate, seconds, max_in_flight=256)
        paced["machine_busy_cores"] = busy_cores(cpu0, wall0)
        paced["load_generator_cores"] = round((time.process_time() - own0) / paced["seconds"], 2)
        cpu0, wall0, own0 = cpu_seconds(), time.monotonic(), time.process_time()
        ctl0 = process_cpu_seconds(pid)
        with recording(pid, profile, seconds) if profile else contextlib.nullcontext():
            saturated = await _saturated(client, tokens, concurrency, seconds)
        saturated["controller_cpu_ms_per_beat"] = round(
            (process_cpu_seconds(pid) - ctl0) / max(saturated["latency_ms"]["n"], 1) * 1000, 2)
        saturated["machine_busy_cores"] = busy_cores(cpu0, wall0)
        saturated["load_generator_cores"] = round((time.process_time() - own0) / saturated["seconds"], 2)
        await asyncio.sleep(1.5)  # a pass or two after the load: would anyone be declared dead?
        dead = await _dead_nodes(client, admin) - before_load
    return {"registration_seconds": round(registration, 2), "silent_while_registering": before_load,
            "paced": paced, "saturated": saturated, "false_deaths": dead}


def heartbeats(nodes: int, rate: float, seconds: float, concurrency: int = 32,
               profile: Path | None = None) -> dict[str, Any]:
    """Heartbeat throughput and latency from `nodes` simulated nodes (a fresh controller on SQLite)."""
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-hb-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        began = time.perf_counter()
        admin, tokens = mint_tokens(url, node_names(nodes))
        minted = time.perf_counter() - began
        controller = Controller(url, Path(tmp), env=heartbeat_env(nodes, rate))
        controller.start()
        try:
            result = asyncio.run(_heartbeats(controller.url, admin, tokens, rate, seconds, concurrency,
                                             controller.pid, profile))
        finally:
            controller.stop()
    return {"nodes": nodes, "auth": "on (one worker token per node)", "token_mint_seconds": round(minted, 1),
            "node_timeout_seconds": max(5.0, 3 * nodes / rate),
            **result}


async def _submissions(url: str, admin: str, one_by_one: int, batches: int, batch_size: int) -> dict[str, Any]:
    async with Pool(url, 64) as client:
        _ok(await client.post("/apply", {"items": [NOOP_SCENARIO]}, admin))
        out: dict[str, Any] = {}
        for concurrency in (1, 16):
            latencies: list[float] = []
            names = iter(range(one_by_one))
            prefix = f"one-c{concurrency}"
            errors = 0

            async def loop(prefix: str = prefix, latencies: list[float] = latencies,
                           names: Any = names) -> None:
                nonlocal errors
                for i in names:
                    began = time.perf_counter()
                    response = await client.post("/jobs", {"scenario": "noop", "priority": "medium",
                                                           "name": f"{prefix}-{i}"}, admin)
                    latencies.append(time.perf_counter() - began)
                    errors += response.status != 201

            began = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            elapsed = time.perf_counter() - began
            out[f"one_by_one_c{concurrency}"] = {"jobs": one_by_one, "in_flight": concurrency, "errors": errors,
                                                 "per_s": round(one_by_one / elapsed, 1),
                                                 "latency_ms": percentiles(latencies)}
        latencies = []
        errors = 0
        began = time.perf_counter()
        for b in range(batches):
            items = [{"apiVersion": "ffrtmp.io/v1", "kind": "Job", "metadata": {"name": f"apply-{b}-{j}"},
                      "spec": {"scenario": "noop", "priority": "low", "parameters": {"n": j}}}
                     for j in range(batch_size)]
            t0 = time.perf_counter()
            response = await client.post("/apply", {"items": items}, admin)
            latencies.append(time.perf_counter() - t0)
            errors += sum(r["result"] != "created" for r in response.json()["results"])
        elapsed = time.perf_counter() - began
        out["apply_batches"] = {"jobs": batches * batch_size, "batch": batch_size, "errors": errors,
                                "per_s": round(batches * batch_size / elapsed, 1),
                                "batch_latency_ms": percentiles(latencies)}
    return out


def submissions(one_by_one: int, batches: int, batch_size: int = 1000) -> dict[str, Any]:
    """Jobs per second through `POST /jobs` and `POST /apply` (a fresh controller on SQLite, no nodes)."""
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-sub-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        admin, _ = mint_tokens(url, [])
        controller = Controller(url, Path(tmp))
        controller.start()
        try:
            result = asyncio.run(_submissions(controller.url, admin, one_by_one, batches, batch_size))
        finally:
            controller.stop()
    return {"auth": "on (admin token)", **result}


async def _delivery(url: str, admin: str, token: str, node: str, samples: int) -> dict[str, Any]:
    async with Pool(url, 4) as client, Pool(url, 2) as admin_client:
        _ok(await admin_client.post("/apply", {"items": [NOOP_SCENARIO]}, admin))
        body = {"slots": 1, "labels": {}, "running": []}
        poll_path = f"/nodes/{node}/heartbeat?waitSeconds=5"
        _ok(await client.post(f"/nodes/{node}/heartbeat", body, token))
        latencies: list[float] = []
        for i in range(samples):
            poll = asyncio.create_task(client.post(poll_path, body, token))
            await asyncio.sleep(0.03)  # the worker is idle and waiting
            began = time.perf_counter()
            _ok(await admin_client.post("/jobs", {"scenario": "noop", "name": f"d-{i}"}, admin))
            reply = (await poll).json()
            if not reply["assignments"]:  # answered before the job arrived: wait for the next answer
                reply = (await client.post(poll_path, body, token)).json()
            latencies.append(time.perf_counter() - began)
            for assignment in reply["assignments"]:
                for state in ("running", "completed"):
                    await client.post(f"/jobs/{assignment['job']}/attempts/{assignment['attempt']}",
                                      {"state": state, "exitCode": 0}, token)
    return {"samples": samples, "latency_ms": percentiles(latencies),
            "samples_ms": [round(x * 1000, 2) for x in latencies]}


def delivery(samples: int) -> dict[str, Any]:
    """Submit-to-assignment-delivered with an idle long-polling node (a fresh controller on SQLite)."""
    with tempfile.TemporaryDirectory(prefix="ffrtmp-bench-del-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        admin, tokens = mint_tokens(url, ["idle-0"])
        controller = Controller(url, Path(tmp))
        controller.start()
        try:
            result = asyncio.run(_delivery(controller.url, admin, tokens["idle-0"], "idle-0", samples))
        finally:
            controller.stop()
    return {"auth": "on", **result}
