"""The FastAPI application: every route of SPEC section 8, auth, limits and errors."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from controller import __version__
from controller.api import routes_admin, routes_apply, routes_jobs, routes_nodes
from controller.api.context import ApiContext
from controller.api.errors import install_error_handlers
from controller.api.fastlane import WorkerLane
from controller.api.limits import BodyLimitMiddleware
from controller.api.longpoll import WorkNotifier
from controller.api.routes_probes import docs_router, metrics_router, probe_router
from controller.api.security import AuthMiddleware
from controller.auth.manager import AuthManager
from controller.farm import Farm
from controller.observability.metrics import Metrics

PROBES = frozenset({"/healthz", "/readyz"})

DESCRIPTION = """\
The controller of an ffrtmp job farm. Send `Authorization: Bearer <token>` on
every route but `/healthz` and `/readyz` (when auth is on). Errors are
`{"error": {"code", "message"}}`; lists are `{"items", "next"}` with `?limit=`
and `?cursor=`. See docs/api.md for the worker protocol.
"""


def _utcnow() -> datetime:
    return datetime.now(UTC)


# FastAPI 0.16x instruments every request for OpenTelemetry when a provider is configured,
# and asks whether one is on every request (3% of a heartbeat's CPU). Metrics here are
# Prometheus (`GET /metrics`): off, where the installed FastAPI has the option.
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {}
)


def create_app(
    farm: Farm,
    auth: AuthManager | None = None,
    metrics: Metrics | None = None,
    notifier: WorkNotifier | None = None,
    *,
    stopping: Callable[[], bool] = lambda: False,
    clock: Callable[[], datetime] = _utcnow,
    leader: Callable[[], bool] = lambda: True,
) -> FastAPI:
    """The API over `farm` (its store and config); auth, metrics and the notifier default to new ones.

    `stopping` tells `/readyz` the process is shutting down; `clock` is what auth checks
    expiry and rate limits against; `leader` tells `/readyz` whether this replica leads.
    """
    config = farm.config
    metrics = metrics if metrics is not None else Metrics()
    auth = auth if auth is not None else AuthManager(farm.store, config.auth, metrics)
    auth.writer = farm.writer  # token `last_used_at` writes join the requests' transactions
    ctx = ApiContext(
        farm=farm, auth=auth, metrics=metrics,
        notifier=notifier if notifier is not None else WorkNotifier(),
        stopping=stopping, clock=clock, leader=leader,
    )
    app = FastAPI(
        title="ffrtmp controller", version=__version__, description=DESCRIPTION,
        docs_url=None, redoc_url=None, openapi_url=None, **_NO_TELEMETRY,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(probe_router())
    app.include_router(metrics_router(config.metrics.public))
    app.include_router(routes_jobs.router)
    app.include_router(routes_nodes.router)
    app.include_router(routes_apply.router)
    app.include_router(routes_admin.router)
    app.include_router(docs_router())
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    public = PROBES | ({"/metrics"} if config.metrics.public else set())
    # Added last = outermost: authenticate before anything reads the body; the worker
    # protocol's lane sees authenticated requests whose body is counted against the limit.
    app.add_middleware(WorkerLane, ctx=ctx)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.server.max_body_bytes)
    app.add_middleware(AuthMiddleware, auth=auth, public_paths=public, clock=clock)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the bearer scheme on every guarded route."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "An `ffr_...` token (see docs/auth.md)."}
        }
        schema["security"] = [{"bearerAuth": []}]
        for path in PROBES:
            for operation in schema["paths"].get(path, {}).values():
                operation["security"] = []
        app.openapi_schema = schema
    return app.openapi_schema
