"""The commands that talk to a running controller over HTTP (SPEC section 9).

Client settings come from `--server`/`--token`, else `FFRTMP_SERVER`/`FFRTMP_TOKEN`,
else the client file (`$FFRTMP_CLIENT_CONFIG`, default `~/.config/ffrtmp/client.yaml`,
keys `server` and `token`), else `http://127.0.0.1:8080` without a token.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from controller.cli.main import CliError
from controller.client import ApiError, Client

OUTPUT_FORMATS = ("table", "wide", "json", "yaml")
T = TypeVar("T")

ServerOption = Annotated[str | None, typer.Option("--server", help="Controller URL [env FFRTMP_SERVER].")]
TokenOption = Annotated[str | None, typer.Option("--token", help="API token [env FFRTMP_TOKEN].")]
OutputOption = Annotated[str, typer.Option("--output", "-o", help="table, wide, json or yaml.")]

get_app: typer.Typer = typer.Typer(help="List jobs, nodes or watched manifest files.", no_args_is_help=True)
describe_app: typer.Typer = typer.Typer(help="Show one job or node in detail.", no_args_is_help=True)
jobs_app: typer.Typer = typer.Typer(help="Submit and manage jobs.", no_args_is_help=True)
delete_app: typer.Typer = typer.Typer(help="Delete objects.", invoke_without_command=True)
wait_app: typer.Typer = typer.Typer(help="Wait for a condition.", no_args_is_help=True)
queue_app: typer.Typer = typer.Typer(help="The priority queue.", no_args_is_help=True)

# On a terminal Rich fits the screen (and colours); in a pipe, keep whole lines for scripts.
console = Console(width=None if sys.stdout.isatty() else 250)


def client_settings(server: str | None, token: str | None) -> tuple[str | None, str | None]:
    """Server and token from flags, environment, then the client file."""
    server = server or os.environ.get("FFRTMP_SERVER")
    token = token or os.environ.get("FFRTMP_TOKEN")
    path = Path(os.environ.get("FFRTMP_CLIENT_CONFIG", "~/.config/ffrtmp/client.yaml")).expanduser()
    if (not server or not token) and path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"{path}: cannot read client settings: {exc}") from exc
        if not isinstance(data, dict) or set(data) - {"server", "token"}:
            raise CliError(f"{path}: expected a mapping with `server` and `token`")
        server = server or data.get("server")
        token = token or data.get("token")
    return server, token


def connect(server: str | None, token: str | None) -> Client:
    """A client with the resolved settings."""
    resolved_server, resolved_token = client_settings(server, token)
    return Client(resolved_server, resolved_token)


def call(server: str | None, token: str | None, action: Callable[[Client], T]) -> T:
    """Run one API action with a fresh client; API failures become one-line CLI errors."""
    with connect(server, token) as client:
        try:
            return action(client)
        except ApiError as exc:
            raise api_error(exc) from exc


def api_error(exc: ApiError) -> CliError:
    """An API failure as one line (exit 1; 2 when the controller can't be reached)."""
    if exc.status == 0:
        return CliError(f"cannot reach the controller: {exc.message}", exit_code=2)
    return CliError(f"{exc.code} ({exc.status}): {exc.message}", exit_code=1)


def parse_duration(text: str) -> float:
    """`90`, `90s`, `5m`, `1h`, `1d` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r}: expected a duration like 30s, 5m, 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _check_output(output: str) -> str:
    if output not in OUTPUT_FORMATS:
        raise typer.BadParameter(f"{output!r}: one of {', '.join(OUTPUT_FORMATS)}", param_hint="-o")
    return output


def emit(items: Any, output: str) -> bool:
    """Print json/yaml output; False when the caller should draw a table."""
    if output == "json":
        sys.stdout.write(json.dumps(items, indent=2, sort_keys=True) + "\n")
        return True
    if output == "yaml":
        sys.stdout.write(yaml.safe_dump(items, sort_keys=True, default_flow_style=False))
        return True
    return False


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = max(int((datetime.now(UTC) - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _pages(fetch: Any) -> Iterator[Any]:
    cursor = None
    while True:
        page = fetch(cursor)
        yield from page["items"]
        cursor = page.get("next")
        if not cursor:
            return


# --- get -----------------------------------------------------------------------------------------


@get_app.command("jobs")
def get_jobs(
    output: OutputOption = "table",
    status: Annotated[str | None, typer.Option("--status")] = None,
    priority: Annotated[str | None, typer.Option("--priority")] = None,
    node: Annotated[str | None, typer.Option("--node")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """List jobs (all pages)."""
    _check_output(output)
    with connect(server, token) as client:
        try:
            items = list(
                _pages(
                    lambda cur: client.list_jobs(
                        status=status, priority=priority, node=node, limit=1000, cursor=cur
                    )
                )
            )
        except ApiError as exc:
            raise api_error(exc) from exc
    if emit(items, output):
        return
    table = Table(box=None, header_style="bold")
    columns = ["NAME", "STATUS", "PRIORITY", "NODE", "ATTEMPT", "RETRIES", "REASON", "AGE"]
    if output == "wide":
        columns += ["SCENARIO", "SOURCE", "MESSAGE"]
    for column in columns:
        table.add_column(column)
    for job in items:
        row = [
            job["name"],
            job["status"],
            job["priority"],
            job.get("node") or "-",
            str(job["attempt"]),
            f"{job['retryCount']}/{job['maxRetries']}",
            job.get("reason") or "-",
            _age(job["createdAt"]),
        ]
        if output == "wide":
            row += [job["scenario"], job.get("sourcePath") or job["source"], (job.get("message") or "")[:80]]
        table.add_row(*row)
    console.print(table)


@get_app.command("nodes")
def get_nodes(
    output: OutputOption = "table",
    status: Annotated[str | None, typer.Option("--status")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """List nodes."""
    _check_output(output)
    items = call(
        server,
        token,
        lambda client: list(_pages(lambda cur: client.list_nodes(status=status, limit=1000, cursor=cur))),
    )
    if emit(items, output):
        return
    table = Table(box=None, header_style="bold")
    columns = ["NAME", "STATUS", "SLOTS", "RUNNING", "LAST HEARTBEAT", "SCHEDULABLE"]
    if output == "wide":
        columns += ["LABELS", "SOURCE"]
    for column in columns:
        table.add_column(column)
    for node in items:
        row = [
            node["name"],
            node["status"],
            str(node["slots"]),
            str(node["running"]),
            _age(node.get("lastHeartbeat")),
            "no" if node["unschedulable"] else "yes",
        ]
        if output == "wide":
            row += [
                ",".join(f"{k}={v}" for k, v in sorted(node["labels"].items())),
                node.get("sourcePath") or node["source"],
            ]
        table.add_row(*row)
    console.print(table)


@get_app.command("manifests")
def get_manifests(
    output: OutputOption = "table", server: ServerOption = None, token: TokenOption = None
) -> None:
    """Per-file status of the watched directory."""
    _check_output(output)
    items = call(
        server, token, lambda client: list(_pages(lambda cur: client.list_manifests(limit=1000, cursor=cur)))
    )
    if emit(items, output):
        return
    table = Table(box=None, header_style="bold")
    for column in ("PATH", "STATUS", "OBJECTS", "APPLIED", "ERROR"):
        table.add_column(column)
    for item in items:
        first = item["errors"][0] if item["errors"] else None
        error = ""
        if first:
            field = f"{first['field']}: " if first.get("field") else ""
            error = f"{first['line']}: {field}{first['message']}"
        table.add_row(
            item["path"], item["status"], str(len(item["objects"])), _age(item.get("appliedAt")), error[:100]
        )
    console.print(table)


# --- describe, logs ------------------------------------------------------------------------------


@describe_app.command("job")
def describe_job(name: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """Spec, status, attempts and audit trail of a job."""
    with connect(server, token) as client:
        try:
            job = client.get_job(name)
            trail = list(
                _pages(lambda cur: client.audit(entity_type="job", entity_id=name, limit=1000, cursor=cur))
            )
        except ApiError as exc:
            raise api_error(exc) from exc
    console.print(f"[bold]Job[/bold] {job['name']}")
    fields = [
        ("Scenario", job["scenario"]),
        ("Parameters", json.dumps(job["parameters"])),
        ("Priority", job["priority"]),
        ("Status", job["status"]),
        ("Reason", job.get("reason") or "-"),
        ("Message", job.get("message") or "-"),
        ("Node", job.get("node") or "-"),
        ("Attempt", str(job["attempt"])),
        ("Retries", f"{job['retryCount']}/{job['maxRetries']}"),
        ("Created", job["createdAt"]),
        ("Started", job.get("startedAt") or "-"),
        ("Finished", job.get("finishedAt") or "-"),
        ("Not before", job.get("notBefore") or "-"),
        ("Source", job.get("sourcePath") or job["source"]),
        ("Labels", json.dumps(job["labels"])),
        ("Node selector", json.dumps(job["nodeSelector"])),
        ("Suspend", str(job["suspend"]).lower()),
    ]
    for key, value in fields:
        console.print(f"  {key + ':':<15} {value}", highlight=False)
    attempts = Table(title="Attempts", box=None, header_style="bold", title_justify="left")
    for column in ("#", "NODE", "STATUS", "REASON", "EXIT", "ASSIGNED", "STARTED", "FINISHED"):
        attempts.add_column(column)
    for a in job.get("attempts", []):
        attempts.add_row(
            str(a["attempt"]),
            a["node"],
            a["status"],
            a.get("reason") or "-",
            "-" if a.get("exitCode") is None else str(a["exitCode"]),
            a["assignedAt"],
            a.get("startedAt") or "-",
            a.get("finishedAt") or "-",
        )
    console.print(attempts)
    audit = Table(title="Audit trail", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "EVENT", "FROM", "TO", "REASON", "BY"):
        audit.add_column(column)
    for entry in trail:
        details = entry["details"]
        audit.add_row(
            entry["createdAt"],
            entry["eventType"],
            str(details.get("from", "")),
            str(details.get("to", "")),
            str(details.get("reason", "")),
            entry.get("clientId") or "",
        )
    console.print(audit)


@describe_app.command("node")
def describe_node(name: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """A node, its running jobs and its audit trail."""
    with connect(server, token) as client:
        try:
            node = client.get_node(name)
            jobs = list(_pages(lambda cur: client.list_jobs(node=name, limit=1000, cursor=cur)))
            trail = list(
                _pages(lambda cur: client.audit(entity_type="node", entity_id=name, limit=1000, cursor=cur))
            )
        except ApiError as exc:
            raise api_error(exc) from exc
    console.print(f"[bold]Node[/bold] {node['name']}")
    for key, value in [
        ("Status", node["status"]),
        ("Slots", str(node["slots"])),
        ("Running", str(node["running"])),
        ("Schedulable", str(not node["unschedulable"]).lower()),
        ("Draining", str(node.get("draining", False)).lower()),
        ("Last heartbeat", node.get("lastHeartbeat") or "-"),
        ("Labels", json.dumps(node["labels"])),
        ("Source", node.get("sourcePath") or node["source"]),
    ]:
        console.print(f"  {key + ':':<15} {value}", highlight=False)
    active = [j for j in jobs if j["status"] in ("assigned", "running")]
    console.print(f"  {'Jobs:':<15} {', '.join(j['name'] for j in active) or '-'}", highlight=False)
    audit = Table(title="Audit trail", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "EVENT", "FROM", "TO", "REASON"):
        audit.add_column(column)
    for entry in trail:
        d = entry["details"]
        audit.add_row(
            entry["createdAt"],
            entry["eventType"],
            str(d.get("from", "")),
            str(d.get("to", "")),
            str(d.get("reason", "")),
        )
    console.print(audit)


def logs(name: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """Print the output tail of each attempt of a job."""
    answer = call(server, token, lambda client: client.job_logs(name))
    items = answer.get("items", answer.get("attempts", []))
    for item in items:
        typer.echo(f"--- attempt {item['attempt']} on {item['node']} ({item['status']})", err=True)
        tail = item.get("logTail") or ""
        sys.stdout.write(tail if tail.endswith("\n") or not tail else tail + "\n")


# --- jobs ----------------------------------------------------------------------------------------


def _params(values: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected key=value", param_hint="--param")
        value = yaml.safe_load(raw) if raw else ""
        out[key] = value if isinstance(value, str | int | float | bool) else raw
    return out


@jobs_app.command("submit")
def jobs_submit(
    scenario: Annotated[str, typer.Option("--scenario")],
    priority: Annotated[str | None, typer.Option("--priority")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="k=v (repeatable).")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Create a job from fields; prints its name."""
    job = call(
        server, token, lambda client: client.submit_job(scenario, priority, _params(param or []), name)
    )
    typer.echo(job["name"])


@jobs_app.command("priority")
def jobs_priority(name: str, priority: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """Change a job's priority class."""
    job = call(server, token, lambda client: client.set_priority(name, priority))
    typer.echo(f"job/{job['name']} priority {job['priority']}")


@jobs_app.command("cancel")
def jobs_cancel(name: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """Cancel a job."""
    job = call(server, token, lambda client: client.cancel_job(name))
    typer.echo(f"job/{job['name']} {job['status']}")


@jobs_app.command("retry")
def jobs_retry(name: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """Retry a failed or cancelled job."""
    job = call(server, token, lambda client: client.retry_job(name))
    typer.echo(f"job/{job['name']} {job['status']}")


# --- apply, diff, delete -----------------------------------------------------------------------


def _manifest_paths(path: Path) -> list[Path]:
    from controller.manifests.validate import manifest_files

    if path.is_dir():
        return manifest_files(path)
    if path.is_file():
        return [path]
    raise CliError(f"{path}: no such file or directory")


def _send(client: Client, files: list[Path], dry_run: bool) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    show = len(files) > 5 and sys.stderr.isatty()
    with Progress(console=Console(stderr=True), transient=True, disable=not show) as progress:
        task = progress.add_task("applying", total=len(files))
        for path in files:
            body = path.read_bytes()
            try:
                answer: Any = client.apply(body, dry_run=dry_run)
            except ApiError as exc:
                if "results" not in exc.body:  # a refusal of some objects still lists them all
                    raise api_error(exc) from exc
                answer = exc.body
            for result in answer["results"]:
                results.append({**result, "file": str(path)})
            progress.advance(task)
    return results


def apply(
    file: Annotated[Path, typer.Option("--filename", "-f", help="A manifest file or directory.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Judge without changing anything.")] = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Create or update the objects of manifest files (exit 1 if any object failed)."""
    with connect(server, token) as client:
        results = _send(client, _manifest_paths(file), dry_run)
    failed = 0
    for r in results:
        suffix = " (dry run)" if dry_run else ""
        if r["result"] == "error":
            failed += 1
            typer.echo(f"{r['kind'].lower()}/{r['name']}: error: {r.get('error')}", err=True)
        else:
            typer.echo(f"{r['kind'].lower()}/{r['name']} {r['result']}{suffix}")
    counts = {
        k: sum(1 for r in results if r["result"] == k)
        for k in ("created", "configured", "unchanged", "error")
    }
    typer.echo(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing to apply", err=True)
    if failed:
        raise typer.Exit(1)


def diff(
    file: Annotated[Path, typer.Option("--filename", "-f", help="A manifest file or directory.")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """What `apply` would change: exit 0 no change, 1 changes, 2 or more on error (like kubectl diff)."""
    try:
        with connect(server, token) as client:
            results = _send(client, _manifest_paths(file), dry_run=True)
    except CliError as exc:
        exc.exit_code = 2
        raise
    errors = [r for r in results if r["result"] == "error"]
    changes = [r for r in results if r["result"] in ("created", "configured")]
    for r in changes:
        typer.echo(
            f"{'+' if r['result'] == 'created' else '~'} {r['kind'].lower()}/{r['name']} ({r['result']})"
        )
    for r in errors:
        typer.echo(f"! {r['kind'].lower()}/{r['name']}: {r.get('error')}", err=True)
    if errors:
        raise typer.Exit(2)
    raise typer.Exit(1 if changes else 0)


@delete_app.callback()
def delete(
    ctx: typer.Context,
    file: Annotated[
        Path | None, typer.Option("--filename", "-f", help="Delete what these manifests declare.")
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Delete the objects a manifest file declares (`-f`), or one object (`delete job NAME`)."""
    if ctx.invoked_subcommand is not None:
        return
    if file is None:
        raise typer.BadParameter("give -f PATH, or a subcommand: delete job NAME / delete node NAME")
    from controller.manifests.validate import validate_paths

    report = validate_paths([file])
    if report.problems:
        raise CliError(
            f"{report.problems[0]} (and {len(report.problems) - 1} more)"
            if len(report.problems) > 1
            else str(report.problems[0])
        )
    with connect(server, token) as client:
        for obj in report.objects:
            try:
                if obj.kind == "Job":
                    client.delete_job(obj.name)
                elif obj.kind == "Node":
                    client.delete_node(obj.name)
                else:
                    typer.echo(
                        f"scenario/{obj.name}: skipped (scenarios are removed with their file)", err=True
                    )
                    continue
            except ApiError as exc:
                if exc.status == 404:
                    typer.echo(f"{obj.kind.lower()}/{obj.name}: not found", err=True)
                    continue
                raise api_error(exc) from exc
            typer.echo(f"{obj.kind.lower()}/{obj.name} deleted")


@delete_app.command("job")
def delete_job(name: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """Delete one job (cancelled first if it is not finished)."""
    call(server, token, lambda client: client.delete_job(name))
    typer.echo(f"job/{name} deleted")


@delete_app.command("node")
def delete_node(name: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """Remove one node (its jobs are requeued)."""
    call(server, token, lambda client: client.delete_node(name))
    typer.echo(f"node/{name} deleted")


# --- wait, queue, audit --------------------------------------------------------------------------

TERMINAL = ("completed", "failed", "cancelled")


@wait_app.command("job")
def wait_job(
    name: str,
    condition: Annotated[
        str, typer.Option("--for", help="The status to wait for (e.g. completed).")
    ] = "completed",
    timeout: Annotated[str, typer.Option("--timeout", help="e.g. 60s, 5m.")] = "60s",
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Wait until a job reaches a status: exit 0 when it does, 1 if it ends otherwise, 3 on timeout."""
    limit = parse_duration(timeout)
    wanted = condition.removeprefix("status=")
    deadline = time.monotonic() + limit
    delay = 0.1
    with connect(server, token) as client:
        while True:
            try:
                status = client.get_job(name)["status"]
            except ApiError as exc:
                raise api_error(exc) from exc
            if status == wanted:
                typer.echo(f"job/{name} {status}")
                return
            if status in TERMINAL:
                raise CliError(f"job/{name} is {status}, not {wanted}", exit_code=1)
            if time.monotonic() >= deadline:
                raise CliError(
                    f"timed out after {timeout} waiting for job/{name} to be {wanted} (it is {status})",
                    exit_code=3,
                )
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
            delay = min(delay * 1.5, 1.0)


@queue_app.command("stats")
def queue_stats(
    output: OutputOption = "table", server: ServerOption = None, token: TokenOption = None
) -> None:
    """Jobs by status and pending jobs by class."""
    _check_output(output)
    stats = call(server, token, lambda client: client.queue_stats())
    if emit(stats, output):
        return
    table = Table(box=None, header_style="bold")
    table.add_column("STATUS")
    table.add_column("JOBS", justify="right")
    for key in ("Pending", "Assigned", "Running", "Completed", "Failed", "Cancelled"):
        table.add_row(key.lower(), str(stats[f"total{key}"]))  # type: ignore[literal-required]
    console.print(table)
    by_class = Table(box=None, header_style="bold")
    by_class.add_column("PRIORITY")
    by_class.add_column("PENDING", justify="right")
    for key, value in stats["byPriority"].items():
        by_class.add_row(key, str(value))
    console.print(by_class)


def audit(
    entity: Annotated[str | None, typer.Option("--entity", help="job/NAME or node/NAME.")] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="e.g. job.transition.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="e.g. 1h, 30m.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    output: OutputOption = "table",
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """The audit log, oldest first."""
    _check_output(output)
    entity_type = entity_id = None
    if entity:
        entity_type, sep, entity_id = entity.partition("/")
        if not sep or not entity_id:
            raise typer.BadParameter("expected KIND/NAME, e.g. job/news-720p", param_hint="--entity")
    after = (datetime.now(UTC) - timedelta(seconds=parse_duration(since))) if since else None
    with connect(server, token) as client:
        try:
            page = client.audit(
                entity_type=entity_type, entity_id=entity_id, event_type=event_type, since=after, limit=limit
            )
        except ApiError as exc:
            raise api_error(exc) from exc
    items = page["items"]
    if emit(items, output):
        return
    table = Table(box=None, header_style="bold")
    for column in ("TIME", "EVENT", "ENTITY", "DETAILS", "BY"):
        table.add_column(column)
    for e in items:
        table.add_row(
            e["createdAt"],
            e["eventType"],
            f"{e['entityType']}/{e['entityId']}",
            json.dumps(e["details"], sort_keys=True)[:100],
            e.get("clientId") or "",
        )
    console.print(table)
