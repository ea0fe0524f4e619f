"""End-to-end harness: a real controller and real workers on loopback, short timeouts.

A `ControllerProcess` is `ffrtmp controller` on a free port over a fresh database (a
SQLite file, or a PostgreSQL database created from a migrated template and dropped
after), with auth on and short timeouts. A test drives it through a `LiveFarm`: the
admin client, `start_worker()` (each worker with its own token bound to its node),
jobs of the `run` scenario (tests/e2e/job.py, which records every run in the test's
own log; parameters sleep, first_sleep, exit, child), and `wait_for`: polling the API against a deadline, never a sleep longer
than what is awaited.

The `live` fixture runs each test over SQLite, then PostgreSQL, with one controller
per database for the whole session (starting one costs about two seconds of CPU,
most of the suite's budget otherwise). So a test's job and node names must not have
been used by an earlier test (checked), and after the test its jobs are cancelled,
its workers stopped and its nodes deleted: nothing leaks into the next test. A test
may kill the controller; it restarts it on the same port and database, as an
operator would (and the next test restarts it if the test failed first).

Every process started for a test carries FFRTMP_E2E_RUN=<id> in its environment
(jobs inherit it from their worker); whatever still has it at teardown is killed,
process group and all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from controller.auth.manager import AuthManager
from controller.client import ApiError, Client, Job
from controller.config import AuthConfig, DatabaseConfig
from controller.store.engine import Store
from controller.store.migrate import upgrade

T = TypeVar("T")

JOB_SCRIPT = Path(__file__).with_name("job.py")
NODE_TIMEOUT = 2.0
HEARTBEAT_INTERVAL = 0.5
CHECK_INTERVAL = 0.2
START_TIMEOUT = 30.0
SETTINGS = {
    "FFRTMP_FAULT_TOLERANCE__NODE_TIMEOUT_SECONDS": str(NODE_TIMEOUT),
    "FFRTMP_FAULT_TOLERANCE__CHECK_INTERVAL_SECONDS": str(CHECK_INTERVAL),
    "FFRTMP_FAULT_TOLERANCE__RETRY_DELAY_SECONDS": "0",
    "FFRTMP_NODES__HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_INTERVAL),
    "FFRTMP_AUTH__ENABLED": "true",
    "FFRTMP_AUTH__RATE_LIMIT_PER_MINUTE": "1000000",
}
GATE_LINE = "[e2e] loaded, waiting for the gate"
GATED_WORKER = f"""\
import sys
from controller.cli import worker_cmd
print({GATE_LINE!r}, flush=True)
sys.stdin.readline()
worker_cmd.main()
"""
TERMINAL = ("completed", "failed", "cancelled")


def wait_for(condition: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(every)


def gone(pid: int) -> bool:
    """True when the process no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment holds `marker` (and its group)."""
    needle = marker.encode()
    for _ in range(3):
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if needle in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # a job leads its own group
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _tail(path: Path, lines: int = 80) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ControllerProcess:
    """`ffrtmp controller` on one port and one database; restartable on both."""

    db_url: str
    workdir: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    """Job and node names in use -> the test that used them (a shared controller)."""

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"
        self.marker = uuid.uuid4().hex[:12]
        # A stable identity, as an operator gives a replica (its pod name): restarted on
        # PostgreSQL after `kill -9`, it takes its own leader lease back at once instead
        # of waiting out the lease (15 s) before it detects dead nodes again.
        self.env = {**os.environ, **SETTINGS, "FFRTMP_E2E_RUN": self.marker,
                    "FFRTMP_LEADER_ELECTION__IDENTITY": f"e2e-{self.marker}"}
        for key in ("FFRTMP_TOKEN", "FFRTMP_SERVER", "FFRTMP_CONFIG"):
            self.env.pop(key, None)
        store = Store.from_config(DatabaseConfig(url=self.db_url))
        try:
            self.admin_token = AuthManager(store, AuthConfig()).issue_token("e2e-admin", "admin").token
        finally:
            store.dispose()
        (self.workdir / "manifests").mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Start it; return once `/readyz` says ready."""
        log = self.workdir / f"controller-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller", "controller", "--db", self.db_url,
                 "--host", "127.0.0.1", "--port", str(self.port),
                 "--manifests", str(self.workdir / "manifests")],
                stdout=out, stderr=subprocess.STDOUT, env=self.env,
            )
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the controller exited: {_tail(log)}")
            try:
                return Client(self.url, timeout=1).readyz().get("status") == "ready"
            except ApiError:
                return False

        wait_for(ready, START_TIMEOUT, "the controller to be ready", every=0.1)

    def kill(self) -> None:
        """`kill -9` it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def close(self) -> None:
        """Kill it and anything left of its workers and jobs."""
        _kill_marked(f"FFRTMP_E2E_RUN={self.marker}")
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


@dataclass
class WorkerProcess:
    """One `ffrtmp worker` process."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    token: str

    def signal(self, sig: int) -> None:
        """Send `sig` to the worker (not to its jobs: they have process groups of their own)."""
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Its exit status."""
        return self.process.wait(timeout)

    def release(self) -> None:
        """Let a worker started with `gated=True` run."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()


@dataclass
class LiveFarm:
    """One test's view of a controller process: its workers, its jobs, its runs log."""

    controller: ControllerProcess
    workdir: Path
    test: str
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    """The last worker started under each name."""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.url = self.controller.url
        self.marker = uuid.uuid4().hex[:12]
        self.admin = Client(self.url, self.controller.admin_token, timeout=15)
        self.runs = self.workdir / "runs.log"
        self.runs.touch()

    def _claim(self, name: str) -> None:
        owner = self.controller.names.setdefault(name, self.test)
        assert owner == self.test, f"name {name!r} was used by {owner} on this shared controller"

    # --- processes -------------------------------------------------------------------------------

    def start_controller(self) -> None:
        """(Re)start the controller on the same port and database."""
        self.controller.start()

    def kill_controller(self) -> None:
        """`kill -9` the controller."""
        self.controller.kill()

    def start_worker(
        self, name: str, slots: int = 1, labels: dict[str, str] | None = None,
        drain_seconds: float = 5.0, full_cli: bool = False, token: str | None = None,
        gated: bool = False, wait: bool = True,
    ) -> WorkerProcess:
        """Start a worker with its own node-bound token; wait until its node is ready.

        The lean entry point (`python -m controller.cli.worker_cmd`) is the same command
        as `ffrtmp worker` without loading the controller's modules; `full_cli` runs
        `python -m controller worker`. `gated`: the process loads, then waits for
        `release()` (a restart that must not depend on how long Python takes to start).
        `wait=False` returns at once (see `start_workers`).
        """
        self._claim(name)
        token = token or self.admin.create_token(f"worker-{name}", "worker", node=name)["token"]
        if gated:
            command = [sys.executable, "-c", GATED_WORKER]
        elif full_cli:
            command = [sys.executable, "-m", "controller", "worker"]
        else:
            command = [sys.executable, "-m", "controller.cli.worker_cmd"]
        command += ["--server", self.url, "--name", name, "--slots", str(slots),
                    "--drain-seconds", str(drain_seconds)]
        for key, value in (labels or {}).items():
            command += ["--label", f"{key}={value}"]
        log = self.workdir / f"worker-{name}-{sum(name in p.name for p in self.logs)}.log"
        self.logs.append(log)
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                # The token through the environment, as operators should: argv is public.
                env={**self.controller.env, "FFRTMP_E2E_RUN": self.marker, "FFRTMP_TOKEN": token},
                stdin=subprocess.PIPE if gated else None,
            )
        worker = WorkerProcess(name, process, log, token)
        self.workers[name] = worker
        self.processes.append(process)
        if gated:
            wait_for(lambda: GATE_LINE in log.read_text(), START_TIMEOUT, f"worker {name} to load")
        elif wait:
            self.wait_ready(name)
        return worker

    def start_workers(self, *names: str, **settings: Any) -> list[WorkerProcess]:
        """Start several workers alike, at once; wait until every node is ready."""
        workers = [self.start_worker(name, wait=False, **settings) for name in names]
        for name in names:
            self.wait_ready(name)
        return workers

    def wait_ready(self, name: str) -> None:
        """Wait until the worker's node is ready (fail if the worker exits)."""
        process = self.workers[name].process
        wait_for(lambda: self._node_ready(name, process), START_TIMEOUT, f"worker {name} to be ready")

    def _node_ready(self, name: str, process: subprocess.Popen[bytes]) -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker {name} exited with {process.returncode}")
        try:
            return self.admin.get_node(name)["status"] == "ready"
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def close(self, failed: bool) -> None:
        """Cancel this test's jobs, stop its workers, delete its nodes; show the logs on failure."""
        try:
            if self.controller.process is not None and self.controller.process.poll() is None:
                for name in self.jobs:
                    with contextlib.suppress(ApiError):
                        if self.job(name)["status"] not in TERMINAL:
                            self.admin.cancel_job(name)
            for process in self.processes:  # a drain with nothing to wait for: a quick goodbye
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)
                    process.send_signal(signal.SIGTERM)
            for process in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
            _kill_marked(f"FFRTMP_E2E_RUN={self.marker}")
            if self.controller.process is not None and self.controller.process.poll() is None:
                for name in self.workers:
                    with contextlib.suppress(ApiError):
                        self.admin.delete_node(name)
        finally:
            self.admin.close()
            if failed:
                for path in self.controller.logs + self.logs:
                    print(f"===== {path.name} (tail) =====\n{_tail(path)}")
                print(f"===== runs.log =====\n{self.runs.read_text()}")

    # --- desired state ---------------------------------------------------------------------------

    def submit(self, name: str, priority: str = "medium", **spec: Any) -> Job:
        """Submit a job of the `run` scenario, tagged with its name; `spec` as JSON fields."""
        self._claim(name)
        self.jobs.append(name)
        parameters = {"log": str(self.runs), "tag": name, **spec.pop("parameters", {})}
        return self.admin.submit_job("run", priority, parameters, name=name, **spec)

    # --- observations ----------------------------------------------------------------------------

    def job(self, name: str) -> Job:
        """`GET /jobs/{name}`."""
        return self.admin.get_job(name)

    def wait_job(self, name: str, *statuses: str, timeout: float = 15.0) -> Job:
        """Wait until the job has one of `statuses`; the job."""
        return wait_for(lambda: (j := self.job(name))["status"] in statuses and j, timeout,
                        f"job {name} to be {'/'.join(statuses)}")

    def all_completed(self, names: list[str]) -> bool:
        """True when every one of these jobs completed."""
        done = {j["name"] for j in self.admin.iter_jobs(status="completed")}
        return done >= set(names)

    def transitions(self, job: str | None = None) -> list[dict[str, Any]]:
        """`job.transition` audit entries (of one job, or all), oldest first."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.admin.audit(entity_type="job", entity_id=job, event_type="job.transition",
                                    limit=1000, cursor=cursor)
            items += page["items"]
            cursor = page["next"]
            if cursor is None:
                return items

    def reasons(self, job: str) -> list[tuple[str, str]]:
        """The job's transitions as (to, reason), oldest first."""
        return [(e["details"]["to"], e["details"]["reason"]) for e in self.transitions(job)]

    def node_transitions(self, node: str) -> list[tuple[str, str]]:
        """The node's transitions as (to, reason), oldest first."""
        page = self.admin.audit(entity_type="node", entity_id=node, event_type="node.transition", limit=1000)
        return [(e["details"]["to"], e["details"]["reason"]) for e in page["items"]]

    def runs_of(self, tag: str) -> dict[str, list[list[str]]]:
        """This job's lines in the runs log: {"start": [[attempt, pid, ...]], "done": [[attempt]]}."""
        out: dict[str, list[list[str]]] = {"start": [], "done": []}
        for line in self.runs.read_text().splitlines():
            kind, job, *rest = line.split()
            if job == tag:
                out[kind].append(rest)
        return out

    def pids(self, job: str, attempt: int) -> list[int]:
        """Pids an attempt recorded (the job's, and its child's)."""
        return [int(p) for start in self.runs_of(job)["start"] if start[0] == str(attempt)
                for p in start[1:]]


def _declare_run_scenario(controller: ControllerProcess) -> None:
    with Client(controller.url, controller.admin_token, timeout=15) as admin:
        results = admin.apply([{
            "apiVersion": "ffrtmp.io/v1", "kind": "Scenario", "metadata": {"name": "run"},
            "spec": {
                "command": [sys.executable, str(JOB_SCRIPT), "{log}", "{tag}", "--sleep", "{sleep}",
                            "--first-sleep", "{first_sleep}", "--exit", "{exit}", "--child", "{child}"],
                "defaults": {"log": os.devnull, "tag": "none", "sleep": 0, "first_sleep": -1, "exit": 0,
                             "child": "false"},
            },
        }])["results"]
    assert results[0]["result"] == "created", results


# --- fixtures ------------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Keep each phase's report on the item, so that the teardown knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return bool(getattr(getattr(request.node, "report_call", None), "failed", True))


@pytest.fixture(scope="session")
def _pg_e2e_template(pg_server: sa.Engine) -> Iterator[str]:
    """A migrated PostgreSQL database that each controller's database is copied from."""
    name = f"ffrtmp_e2e_template_{uuid.uuid4().hex[:8]}"
    with pg_server.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(pg_server.url).set(database=name).render_as_string(hide_password=False)
    store = Store.from_config(DatabaseConfig(url=url))
    upgrade(store)
    store.dispose()
    yield name
    with pg_server.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def _database(kind: str, directory: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or a PostgreSQL database dropped after."""
    if kind == "sqlite":
        template: Path = request.getfixturevalue("_sqlite_template")
        path = directory / "ffrtmp.db"
        path.write_bytes(template.read_bytes())
        yield f"sqlite:///{path}"
        return
    server: sa.Engine = request.getfixturevalue("pg_server")
    template_name: str = request.getfixturevalue("_pg_e2e_template")
    name = f"ffrtmp_e2e_{uuid.uuid4().hex[:12]}"
    with server.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
    try:
        yield sa.make_url(server.url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=DATABASES)
def _controller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControllerProcess]:
    directory = tmp_path_factory.mktemp(f"controller-{request.param}")
    with _database(request.param, directory, request) as url:
        controller = ControllerProcess(url, directory)
        try:
            controller.start()
            _declare_run_scenario(controller)
            yield controller
        finally:
            controller.close()


@pytest.fixture
def live(_controller: ControllerProcess, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveFarm]:
    """This test's view of the session's controller (per database); cleaned up after."""
    if _controller.process is None or _controller.process.poll() is not None:
        _controller.start()  # an earlier test killed it and failed before restarting it
    farm = LiveFarm(_controller, tmp_path, request.node.name)
    try:
        yield farm
    finally:
        farm.close(_failed(request))
