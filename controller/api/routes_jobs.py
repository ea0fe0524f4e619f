"""Jobs: submit, list, read, patch, cancel, retry, delete, logs."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from starlette.concurrency import run_in_threadpool

from controller.api.context import ApiContext, Ctx, Cursor, Limit, ObjectName, decode_cursor, encode_cursor
from controller.api.errors import ApiProblem
from controller.api.schemas import ErrorBody, JobCreate, JobLogs, JobOut, Page, storable
from controller.api.security import require
from controller.auth.roles import Permission, Principal
from controller.domain.states import JobStatus, Priority
from controller.farm import NotFound
from controller.store import views

router = APIRouter(tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job."},
    409: {"model": ErrorBody, "description": "Refused by the job's current state or owner."},
}
Reader = Annotated[Principal, require(Permission.READ)]
Writer = Annotated[Principal, require(Permission.WRITE_JOBS)]


def _job(ctx: Ctx, name: str) -> JobOut:
    with ctx.store.read() as session:
        view = views.get_job(session, name, ctx.config)
    if view is None:
        raise NotFound(f"job {name!r} not found")
    return JobOut.model_validate(view)


@router.post(
    "/jobs", status_code=201, response_model=JobOut, summary="Submit a job",
    responses={409: {"model": ErrorBody, "description": "A job of that name exists."},
               422: {"model": ErrorBody, "description": "Invalid fields."}},
)
async def submit_job(body: JobCreate, ctx: Ctx, principal: Writer) -> JobOut:
    """Create a job from fields (object source `api`)."""
    return await answer_submit(ctx, body, principal)


async def answer_submit(ctx: ApiContext, body: JobCreate, principal: Principal) -> JobOut:
    """The submit route's work, once its request is parsed (also `controller.api.fastlane`)."""
    principal.require(Permission.WRITE_JOBS)
    fields: dict[str, Any] = {"spec": body.spec_fields(), "labels": body.labels,
                              "client_id": principal.client_id}
    # Written with other requests' writes in one transaction (group commit), answered once
    # it has committed; alone when the writer is closed (shutting down).
    written = ctx.farm.submit_batched(body.scenario, body.priority, body.parameters, body.name, **fields)
    if written is None:
        name = await run_in_threadpool(
            partial(ctx.farm.submit, body.scenario, body.priority, body.parameters, body.name, **fields))
        return await run_in_threadpool(_job, ctx, name)
    return JobOut.model_validate(await written)


@router.get("/jobs", response_model=Page[JobOut], summary="List jobs")
def list_jobs(
    ctx: Ctx,
    _: Reader,
    status: Annotated[JobStatus | None, Query()] = None,
    priority: Annotated[Priority | None, Query()] = None,
    node: Annotated[str | None, Query(max_length=63, pattern=r"^[a-z0-9-]+$")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[JobOut]:
    """Jobs by creation, filtered by status, priority class and node."""
    with ctx.store.read() as session:
        items, after = views.list_jobs(
            session, ctx.config, status=status, priority=priority, node=node, limit=limit,
            after_id=decode_cursor(cursor),
        )
    return Page[JobOut](
        items=[JobOut.model_validate(v) for v in items],
        next=encode_cursor(after) if after is not None else None,
    )


@router.get("/jobs/{name}", response_model=JobOut, responses=_ERRORS, summary="Read a job")
def get_job(name: ObjectName, ctx: Ctx, _: Reader) -> JobOut:
    """One job with its attempts."""
    return _job(ctx, name)


@router.patch("/jobs/{name}", response_model=JobOut, responses=_ERRORS, summary="Change a job")
def patch_job(
    name: ObjectName,
    ctx: Ctx,
    principal: Writer,
    patch: Annotated[
        dict[str, Any],
        Body(
            description="A JSON merge patch (RFC 7396) of spec fields (`priority`, `maxRetries`, "
            "`suspend`, ...) and `labels`; `null` removes a field.",
            examples=[{"priority": "live"}],
        ),
    ],
) -> JobOut:
    """Change mutable fields; `scenario`, `parameters` and `nodeSelector` only while pending."""
    problem = storable(patch)
    if problem:
        raise ApiProblem(422, problem)
    ctx.farm.patch_job(name, patch, client_id=principal.client_id)
    return _job(ctx, name)


@router.post("/jobs/{name}/cancel", response_model=JobOut, responses=_ERRORS, summary="Cancel a job")
def cancel_job(name: ObjectName, ctx: Ctx, principal: Writer) -> JobOut:
    """Cancel a non-terminal job; its worker is told to stop the attempt."""
    ctx.farm.cancel(name, client_id=principal.client_id)
    return _job(ctx, name)


@router.post("/jobs/{name}/retry", response_model=JobOut, responses=_ERRORS, summary="Retry a job")
def retry_job(name: ObjectName, ctx: Ctx, principal: Writer) -> JobOut:
    """Send a failed or cancelled job back to pending, its retry count reset."""
    ctx.farm.retry(name, client_id=principal.client_id)
    return _job(ctx, name)


@router.delete(
    "/jobs/{name}", status_code=204, response_class=Response, responses=_ERRORS,
    summary="Delete a job",
)
def delete_job(name: ObjectName, ctx: Ctx, principal: Writer) -> Response:
    """Delete a job (cancelled first when running); its history stays in the audit log."""
    ctx.farm.delete_job(name, client_id=principal.client_id)
    return Response(status_code=204)


@router.get("/jobs/{name}/logs", response_model=JobLogs, responses=_ERRORS, summary="Job output")
def job_logs(name: ObjectName, ctx: Ctx, _: Reader) -> JobLogs:
    """The output tail of every attempt, oldest first."""
    with ctx.store.read() as session:
        logs = views.attempt_logs(session, name)
    if logs is None:
        raise NotFound(f"job {name!r} not found")
    return JobLogs.model_validate({"job": name, "attempts": logs})
