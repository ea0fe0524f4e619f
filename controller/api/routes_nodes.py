"""Nodes and the worker protocol: heartbeats (long-poll) and fenced attempt reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache, partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from controller.api.context import (
    ApiContext,
    Ctx,
    Cursor,
    Limit,
    ObjectName,
    decode_cursor,
    encode_cursor,
)
from controller.api.schemas import (
    INT32,
    AssignmentOut,
    AttemptRefOut,
    AttemptReportIn,
    ErrorBody,
    ErrorDetail,
    HeartbeatIn,
    HeartbeatOut,
    NodeOut,
    Page,
    ReportIn,
    ReportOut,
    ReportResultOut,
    ReportsIn,
    ReportsOut,
)
from controller.api.security import require
from controller.auth.errors import PermissionDenied
from controller.auth.roles import Permission, Principal, Role, role_allows
from controller.domain.states import NodeStatus
from controller.farm import FarmError, HeartbeatReply, NotFound, ReportResult
from controller.store import views

router = APIRouter()
log = logging.getLogger("controller.api")

Reader = Annotated[Principal, require(Permission.READ)]
Worker = Annotated[Principal, require(Permission.WORKER_REPORT)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such node."}}


@router.get("/nodes", response_model=Page[NodeOut], tags=["nodes"], summary="List nodes")
def list_nodes(
    ctx: Ctx, _: Reader, status: Annotated[NodeStatus | None, Query()] = None,
    limit: Limit = 100, cursor: Cursor = None,
) -> Page[NodeOut]:
    """Nodes by registration, filtered by status."""
    with ctx.store.read() as session:
        items, after = views.list_nodes(session, status=status, limit=limit,
                                        after_id=decode_cursor(cursor))
    return Page[NodeOut](items=[NodeOut.model_validate(v) for v in items],
                         next=encode_cursor(after) if after is not None else None)


@router.get("/nodes/{name}", response_model=NodeOut, responses=_NOT_FOUND, tags=["nodes"],
            summary="Read a node")
def get_node(name: ObjectName, ctx: Ctx, _: Reader) -> NodeOut:
    """One node."""
    with ctx.store.read() as session:
        view = views.get_node(session, name)
    if view is None:
        raise NotFound(f"node {name!r} not found")
    return NodeOut.model_validate(view)


@router.delete(
    "/nodes/{name}", status_code=204, response_class=Response, tags=["nodes"], summary="Delete a node",
    responses={**_NOT_FOUND, 409: {"model": ErrorBody, "description": "Owned by a manifest file."}},
)
def delete_node(
    name: ObjectName, ctx: Ctx, principal: Annotated[Principal, require(Permission.WRITE_NODES)]
) -> Response:
    """Remove a node; its assigned and running jobs are requeued as if it died."""
    ctx.farm.delete_node(name, client_id=principal.client_id)
    return Response(status_code=204)


@lru_cache(maxsize=16)
def _nothing_to_do(interval: float) -> bytes:
    """The answer to most heartbeats, encoded once per interval."""
    out = HeartbeatOut(assignments=[], cancel=[], heartbeat_interval_seconds=interval)
    return out.model_dump_json().encode()


def _heartbeat_out(reply: HeartbeatReply) -> Response:
    # Serialized here, once: FastAPI would validate the model again before encoding it,
    # on the route every worker calls every few seconds. The schema is still HeartbeatOut.
    if not reply.assignments and not reply.cancel:
        return Response(_nothing_to_do(reply.heartbeat_interval_seconds), media_type="application/json")
    out = HeartbeatOut(
        assignments=[AssignmentOut.model_validate(a) for a in reply.assignments],
        cancel=[AttemptRefOut(job=j, attempt=a) for j, a in reply.cancel],
        heartbeat_interval_seconds=reply.heartbeat_interval_seconds,
    )
    return Response(out.model_dump_json(), media_type="application/json")


@router.post(
    "/nodes/{name}/heartbeat", response_model=HeartbeatOut, tags=["worker protocol"],
    summary="Heartbeat (long-poll)",
    responses={403: {"model": ErrorBody, "description": "A worker token of another node."},
               404: {"model": ErrorBody, "description": "Undeclared node, autoRegister off."}},
)
async def heartbeat(
    name: ObjectName,
    body: HeartbeatIn,
    ctx: Ctx,
    principal: Worker,
    wait_seconds: Annotated[
        float,
        Query(
            alias="waitSeconds", ge=0, allow_inf_nan=False,
            description="Long-poll: with nothing to start or stop, hold the answer up to this "
            "many seconds (capped at the heartbeat interval) until work is scheduled for this "
            "node. 0 (default) answers at once.",
        ),
    ] = 0.0,
    draining: Annotated[
        bool,
        Query(
            description="The worker is draining (SIGTERM): nothing new is bound to it through "
            "this beat, attempts assigned to it that it does not hold are handed back "
            "(reason Released, no retry counted), and once it holds nothing the node is marked "
            "dead (reason Released) so that no work is bound to a worker that left. Its next "
            "ordinary heartbeat brings it back.",
        ),
    ] = False,
) -> Response:
    """Record the beat, fence what the worker holds, schedule for this node and answer."""
    return await answer_heartbeat(ctx, name, body, principal, wait_seconds, draining)


async def answer_heartbeat(
    ctx: ApiContext, name: str, body: HeartbeatIn, principal: Principal, wait_seconds: float,
    draining: bool,
) -> Response:
    """The heartbeat route's work, once its request is parsed (also `controller.api.fastlane`)."""
    principal.require(Permission.WORKER_REPORT, name)
    ctx.metrics.heartbeats.inc()
    running = [(r.job, r.attempt) for r in body.running] if body.running is not None else None
    idle = not draining and not running
    interval = ctx.config.nodes.heartbeat_interval_seconds

    async def beat(woken: bool) -> HeartbeatReply:
        # An idle worker's beat is recorded with others in one transaction when nothing
        # else is due; anything else (or a beat the batch could not settle) runs in full,
        # also written with other requests' writes (alone when the writer is closed). A
        # long-poll woken for work goes straight to the full beat: the short one would
        # find the work and hand over anyway, one write later.
        if idle and not woken and await ctx.farm.beats.submit(name, body.slots, body.labels):
            return HeartbeatReply([], [], interval)
        written = ctx.farm.heartbeat_batched(name, body.slots, body.labels, running,
                                             client_id=principal.client_id, draining=draining)
        if written is None:
            return await run_in_threadpool(partial(ctx.farm.heartbeat, name, body.slots, body.labels, running,
                                                   client_id=principal.client_id, draining=draining))
        return await written

    wait = 0.0 if draining else min(wait_seconds, interval)
    if wait <= 0 or ctx.stopping():
        return _heartbeat_out(await beat(False))
    return _heartbeat_out(await _long_poll(ctx, name, body, running, beat, wait))


async def _long_poll(
    ctx: ApiContext, name: str, body: HeartbeatIn, running: list[tuple[str, int]] | None,
    beat: Callable[[bool], Awaitable[HeartbeatReply]], wait: float,
) -> HeartbeatReply:
    """Beat; while there is nothing to do, wait for a wake-up and beat again (until `wait`)."""
    free = body.slots is None or len(running or ()) < body.slots
    # Registered before the first beat: a change committed while it runs still wakes us.
    waiter = ctx.notifier.register(name, free)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        reply = await beat(False)
        while not (reply.assignments or reply.cancel):
            remaining = deadline - loop.time()
            if remaining <= 0 or ctx.notifier.closed:
                break
            if not await ctx.notifier.wait(waiter, remaining) or ctx.notifier.closed:
                break
            ctx.notifier.rearm(waiter)
            reply = await beat(True)
        return reply
    finally:
        ctx.notifier.unregister(waiter)


@router.post(
    "/jobs/{name}/attempts/{attempt}", response_model=ReportOut, tags=["worker protocol"],
    summary="Report on an attempt",
    responses={
        403: {"model": ErrorBody, "description": "A worker token of another node."},
        404: {"model": ErrorBody, "description": "No such job."},
        409: {"model": ErrorBody, "description": "Stale attempt (fenced): nothing changed."},
    },
)
async def report(
    name: ObjectName,
    attempt: Annotated[int, Path(ge=1, le=INT32)],
    body: ReportIn,
    ctx: Ctx,
    principal: Worker,
) -> ReportOut:
    """Apply a worker's report: fenced by attempt (409 when stale) and idempotent."""
    return await answer_report(ctx, name, attempt, body, principal)


async def answer_report(
    ctx: ApiContext, name: str, attempt: int, body: ReportIn, principal: Principal
) -> ReportOut:
    """The report route's work, once its request is parsed (also `controller.api.fastlane`)."""
    if not role_allows(principal.role, Permission.WORKER_REPORT):
        raise PermissionDenied(f"role {principal.role.value!r} of client {principal.client_id!r} "
                               f"may not {Permission.WORKER_REPORT.value}")
    node = body.node
    if principal.role is Role.WORKER:
        if node is not None and node != principal.node:
            raise PermissionDenied(f"worker token of node {principal.node!r} may not report as {node!r}")
        node = principal.node
    # The farm checks the attempt's node in its own transaction (WrongNode is a 403).
    outcome = await _reported(ctx, (await _write_reports(ctx, [(name, attempt, body)], node, principal))[0])
    return ReportOut(job=outcome.job, attempt=outcome.attempt, status=outcome.status,
                     applied=outcome.applied)


@router.post(
    "/nodes/{name}/reports", response_model=ReportsOut, tags=["worker protocol"],
    summary="Report on several attempts",
    responses={403: {"model": ErrorBody, "description": "A worker token of another node."}},
)
async def reports(name: ObjectName, body: ReportsIn, ctx: Ctx, principal: Worker) -> ReportsOut:
    """Apply several of a node's reports at once, in order, each as the single report route would.

    Each report is fenced and idempotent on its own; one refused (stale: `StaleAttempt`,
    unknown job: `NotFound`, another node's attempt: `Forbidden`; `InternalError`, a bug,
    where the single route answers 500) is answered in its result and changes nothing,
    the others still apply. A worker sends here what finished while its previous
    request was on the way: one request for many jobs.
    """
    return await answer_reports(ctx, name, body, principal)


async def answer_reports(ctx: ApiContext, name: str, body: ReportsIn, principal: Principal) -> ReportsOut:
    """The batch report route's work, once its request is parsed (also `controller.api.fastlane`)."""
    principal.require(Permission.WORKER_REPORT, name)
    items = [(r.job, r.attempt, r) for r in body.reports]
    written = await _write_reports(ctx, items, name, principal)
    results = []
    for (job, attempt, _), pending in zip(items, written, strict=True):
        try:
            outcome = await _reported(ctx, pending)
        except FarmError as exc:
            error = ErrorDetail(code=exc.code, message=str(exc))
            results.append(ReportResultOut(job=job, attempt=attempt, error=error))
            continue
        except Exception as exc:  # a bug: that report's write was rolled back, the others stand
            log.exception("[API] Internal error on a report of %s attempt %d: %s", job, attempt, exc)
            error = ErrorDetail(code="InternalError", message="internal error (a bug); see the log")
            results.append(ReportResultOut(job=job, attempt=attempt, error=error))
            continue
        results.append(ReportResultOut(job=outcome.job, attempt=outcome.attempt, status=outcome.status,
                                       applied=outcome.applied))
    return ReportsOut(results=results)


_Pending = Awaitable[ReportResult] | ReportResult | BaseException


async def _write_reports(
    ctx: ApiContext, items: Sequence[tuple[str, int, ReportIn | AttemptReportIn]], node: str | None,
    principal: Principal,
) -> list[_Pending]:
    """Hand the reports to the group-commit writer (all of them before waiting for any).

    Each one is written in its own savepoint of a shared transaction, in order; when the
    writer is closed (shutting down) they are written one by one, alone.
    """
    out: list[_Pending] = []
    for job, attempt, body in items:
        fields: dict[str, Any] = {
            "exit_code": body.exit_code, "message": body.message, "log_tail": body.log_tail,
            "result": body.result, "reason": body.reason, "node": node,
            "client_id": principal.client_id, "node_bound": principal.role is Role.WORKER,
        }
        written = ctx.farm.report_batched(job, attempt, body.state, **fields)
        if written is not None:
            out.append(written)
            continue
        try:
            out.append(await run_in_threadpool(partial(ctx.farm.report, job, attempt, body.state, **fields)))
        except Exception as exc:  # answered for this report alone, as the batched path does
            out.append(exc)
    return out


async def _reported(ctx: ApiContext, pending: _Pending) -> ReportResult:
    """A written report's outcome (raising what the farm raised), counted when it failed the job."""
    if isinstance(pending, BaseException):
        raise pending
    outcome = pending if isinstance(pending, ReportResult) else await pending
    if outcome.applied and outcome.status == "failed":
        ctx.metrics.failed_jobs.inc()
    return outcome
