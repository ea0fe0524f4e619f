"""`ffrtmp up`: the demo farm on the embedded default.

Starts a controller (SQLite in the working directory, watching `manifests/`) and N
local workers as real processes, shows jobs, nodes and recent transitions live,
and with `--exit-when-done` stops everything once every job has finished (jobs no
node here can run, such as ffmpeg transcodes on a machine without ffmpeg, are
reported as skipped).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from controller.cli.main import CliError, controller_config
from controller.client import ApiError, Client

LISTENING = re.compile(r"Listening on (https?://\S+?:\d+)")
TERMINAL = ("completed", "failed", "cancelled")
POLL_SECONDS = 0.5
"""How often the live view reads the farm (four requests each time)."""
DEMO_RATE_LIMIT_PER_MINUTE = 6000
"""`auth.rateLimitPerMinute` of the demo's controller (the default is 100)."""

# A pending job that no node of this farm can take: it would wait forever here.
UNRUNNABLE = ("NoMatchingNode",)


@dataclass
class LocalFarm:
    """The processes of a local farm."""

    controller: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the workers (they drain), then the controller; SIGKILL what lingers."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        _wait_all(self.workers, grace)
        if self.controller.poll() is None:
            self.controller.send_signal(signal.SIGTERM)
        _wait_all([self.controller], grace)


def _wait_all(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tokens(db_url: str, workers: int) -> tuple[str, list[str]]:
    """An admin token for the view and one worker token per local worker (straight in the DB)."""
    from controller.auth.manager import AuthManager
    from controller.config import load_config
    from controller.store import migrate
    from controller.store.engine import Store

    cfg = load_config(env={}, overrides={"database": {"url": db_url}})
    store = Store.from_config(cfg.database)
    try:
        migrate.upgrade(store)
        auth = AuthManager(store, cfg.auth)
        admin = auth.issue_token("ffrtmp-up", "admin", actor="ffrtmp-up").token
        nodes = [
            auth.issue_token(f"local-{i}", "worker", f"local-{i}", actor="ffrtmp-up").token
            for i in range(1, workers + 1)
        ]
    finally:
        store.dispose()
    return admin, nodes


def _start(
    db_url: str,
    manifests: Path,
    port: int,
    workers: int,
    logs: Path,
    admin: str,
    worker_tokens: list[str],
    slots: int,
) -> LocalFarm:
    logs.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FFRTMP_")}
    log_file = (logs / "controller.log").open("wb")
    controller = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller",
            "controller",
            "--db",
            db_url,
            "--manifests",
            str(manifests),
            "--port",
            str(port),
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # The live view polls four routes twice a second with the session's admin token:
        # more than the default 100 requests a minute per client (which would refuse it
        # with 429 in under a minute). The demo's controller is local and its tokens too.
        env={**base_env, "FFRTMP_AUTH__RATE_LIMIT_PER_MINUTE": str(DEMO_RATE_LIMIT_PER_MINUTE)},
    )
    farm = LocalFarm(controller)
    deadline = time.monotonic() + 60
    while not farm.url:
        if controller.poll() is not None:
            raise CliError(f"the controller exited ({controller.returncode}); see {logs / 'controller.log'}")
        if time.monotonic() > deadline:
            farm.stop()
            raise CliError(f"the controller did not start within 60 s; see {logs / 'controller.log'}")
        match = LISTENING.search((logs / "controller.log").read_text(errors="replace"))
        if match:
            farm.url = match.group(1)
        else:
            time.sleep(0.1)
    for i, token in enumerate(worker_tokens, start=1):
        worker_log = (logs / f"local-{i}.log").open("wb")
        # The token goes through the environment, not argv (argv is visible to every user).
        env = {**base_env, "FFRTMP_TOKEN": token}
        farm.workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller",
                    "worker",
                    "--server",
                    farm.url,
                    "--name",
                    f"local-{i}",
                    "--slots",
                    str(slots),
                    "--drain-seconds",
                    "5",
                ],
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
    return farm


def _view(
    jobs: Sequence[Mapping[str, Any]],
    nodes: Sequence[Mapping[str, Any]],
    recent: Sequence[Mapping[str, Any]],
    url: str,
) -> Group:
    counts = Counter(j["status"] for j in jobs)
    summary = Table(title=f"ffrtmp farm at {url}", box=None, header_style="bold", title_justify="left")
    for status in ("pending", "assigned", "running", "completed", "failed", "cancelled"):
        summary.add_column(status, justify="right")
    summary.add_row(
        *(
            str(counts.get(s, 0))
            for s in ("pending", "assigned", "running", "completed", "failed", "cancelled")
        )
    )
    node_table = Table(title="Nodes", box=None, header_style="bold", title_justify="left")
    for column in ("NAME", "STATUS", "RUNNING", "SLOTS", "LABELS"):
        node_table.add_column(column)
    for n in nodes:
        node_table.add_row(
            n["name"],
            n["status"],
            str(n["running"]),
            str(n["slots"]),
            ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())),
        )
    job_table = Table(title="Jobs", box=None, header_style="bold", title_justify="left")
    for column in ("NAME", "PRIORITY", "STATUS", "NODE", "REASON"):
        job_table.add_column(column)
    for j in jobs:
        job_table.add_row(j["name"], j["priority"], j["status"], j.get("node") or "-", j.get("reason") or "-")
    events = Table(title="Recent transitions", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "JOB", "FROM", "TO", "REASON", "NODE"):
        events.add_column(column)
    for e in recent[-8:]:
        d = e["details"]
        events.add_row(
            e["createdAt"][11:23],
            e["entityId"],
            d.get("from", ""),
            d.get("to", ""),
            d.get("reason", ""),
            d.get("node") or "",
        )
    return Group(summary, node_table, job_table, events)


def _done(jobs: Sequence[Mapping[str, Any]], manifests: Sequence[Mapping[str, Any]]) -> bool:
    if not jobs or not manifests or any(m["status"] == "invalid" for m in manifests):
        return False
    return all(
        j["status"] in TERMINAL or (j["status"] == "pending" and j.get("reason") in UNRUNNABLE) for j in jobs
    )


def up(
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="Local workers to start.")] = 2,
    exit_when_done: Annotated[
        bool, typer.Option("--exit-when-done", help="Stop once every job has finished.")
    ] = False,
    manifests: Annotated[Path, typer.Option("--manifests", help="Watched manifests directory.")] = Path(
        "manifests"
    ),
    db: Annotated[str, typer.Option("--db", help="Database URL.")] = "sqlite:///ffrtmp.db",
    port: Annotated[int, typer.Option("--port", help="API port (0: any free port).")] = 8080,
    slots: Annotated[int, typer.Option("--slots", min=1, help="Slots per worker.")] = 2,
    logs: Annotated[Path, typer.Option("--logs", help="Where process logs go.")] = Path("ffrtmp-logs"),
    timeout: Annotated[
        float, typer.Option("--timeout", help="With --exit-when-done: give up after (s).")
    ] = 600,
) -> None:
    """Run a controller and local workers on the defaults (the demo); Ctrl-C stops them."""
    if not manifests.is_dir():
        raise CliError(f"{manifests}: no such directory (the example manifests live in manifests/)")
    controller_config(None, db)  # refuse a bad URL before starting anything
    admin, worker_tokens = _tokens(db, workers)
    farm = _start(db, manifests.resolve(), port, workers, logs, admin, worker_tokens, slots)
    console = Console(stderr=True)
    console.print(f"controller at {farm.url}, {workers} worker(s); logs in {logs}/", highlight=False)
    console.print(f"admin token for this session (shown once): {admin}", highlight=False, soft_wrap=True)
    stopped = {"now": False}

    def _stop(signum: int, _frame: object) -> None:
        stopped["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    outcome = 0
    client = Client(farm.url, admin, timeout=10)
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while not stopped["now"]:
                if farm.controller.poll() is not None:
                    raise CliError(
                        f"the controller exited ({farm.controller.returncode}); see {logs / 'controller.log'}"
                    )
                try:
                    jobs = list(client.iter_jobs())
                    nodes = client.list_nodes(limit=1000)["items"]
                    files = client.list_manifests(limit=1000)["items"]
                    recent = client.audit(event_type="job.transition", limit=1000)["items"]
                except ApiError as exc:
                    raise CliError(f"the controller stopped answering: {exc}") from exc
                live.update(_view(jobs, nodes, recent, farm.url))
                if exit_when_done and _done(jobs, files):
                    break
                if exit_when_done and time.monotonic() - started > timeout:
                    outcome = 3
                    console.print(f"gave up after {timeout:g} s with jobs still running")
                    break
                time.sleep(POLL_SECONDS)
        if exit_when_done and outcome == 0:
            outcome = _summary(console, jobs)
    finally:
        client.close()
        with contextlib.suppress(Exception):
            farm.stop()
    raise typer.Exit(outcome)


def _summary(console: Console, jobs: Sequence[Mapping[str, Any]]) -> int:
    counts = Counter(j["status"] for j in jobs)
    skipped = [j["name"] for j in jobs if j["status"] == "pending"]
    console.print()  # the live view may leave the cursor at the end of its last line
    console.print(
        f"done: {counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
        f"{counts.get('cancelled', 0)} cancelled",
        highlight=False,
    )
    if skipped:
        console.print(
            f"skipped (no node here can run them, e.g. no ffmpeg): {', '.join(skipped)}", highlight=False
        )
    return 1 if counts.get("failed") else 0
