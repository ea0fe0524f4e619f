"""Probes, metrics and the API's own documentation."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from controller.api.context import ApiContext, Ctx
from controller.api.schemas import Health, Readiness
from controller.api.security import require
from controller.auth.roles import Permission, Principal
from controller.observability.metrics import CONTENT_TYPE
from controller.store import migrate

Reader = Annotated[Principal, require(Permission.READ)]


def readiness(ctx: ApiContext, head: str) -> Readiness:
    """Database reachable and schema at the code's head revision (and not shutting down).

    `leader` says whether this replica runs the reconcile pass; it does not change
    readiness: every replica serves the API.
    """
    try:
        with ctx.store.read() as session:
            session.execute(sa.text("SELECT 1"))
        revision = migrate.current_revision(ctx.store)
    except Exception as exc:  # any failure to reach the database means "not ready"
        return Readiness(status="unready", database=f"unreachable: {type(exc).__name__}",
                         schema_head=head, leader=ctx.leader())
    stopping = ctx.stopping()
    ready = revision == head and not stopping
    database = "ok" if revision == head else "schema not current"
    return Readiness(status="ready" if ready else "unready", database=database,
                     schema_revision=revision, schema_head=head, stopping=stopping,
                     leader=ctx.leader())


def probe_router() -> APIRouter:
    """`/healthz` and `/readyz`: never authenticated."""
    router = APIRouter(tags=["probes"])
    head = migrate.head_revision()

    @router.get("/healthz", response_model=Health, summary="Liveness")
    def healthz() -> Health:
        """The process answers."""
        return Health()

    @router.get("/readyz", response_model=Readiness, summary="Readiness",
                responses={503: {"model": Readiness, "description": "Not ready (see why)."}})
    def readyz(ctx: Ctx) -> JSONResponse:
        """Database reachable and schema current; 503 otherwise or while shutting down."""
        result = readiness(ctx, head)
        return JSONResponse(result.model_dump(by_alias=True),
                            status_code=200 if result.status == "ready" else 503)

    return router


def metrics_router(public: bool) -> APIRouter:
    """`/metrics` in the Prometheus text format (readers only, unless `metrics.public`)."""
    router = APIRouter(tags=["probes"])
    guard: list[Any] = [] if public else [require(Permission.READ)]

    @router.get("/metrics", response_class=Response, dependencies=guard, summary="Metrics",
                responses={200: {"content": {"text/plain": {}}}})
    def metrics(ctx: Ctx) -> Response:
        """Every controller metric."""
        return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE)

    return router


def docs_router() -> APIRouter:
    """`/openapi.json` and `/docs`, for readers (auth on) like any other read."""
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json")
    def openapi(request: Request, _: Reader) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs", dependencies=[require(Permission.READ)])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ffrtmp controller API")

    return router
