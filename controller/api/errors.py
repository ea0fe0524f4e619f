"""Error answers: always `{"error": {"code", "message"}}` with the right status.

Domain errors (`FarmError`) carry their own status and code; auth errors map to
401, 403 and 429 (with `Retry-After`); request validation to 422, or 400 when the
body is not even JSON. Anything else is a bug: logged with its traceback and
answered 500, still in JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.auth.errors import (
    InvalidToken,
    InvalidTokenRequest,
    PermissionDenied,
    RateLimitExceeded,
)
from controller.farm import FarmError

log = logging.getLogger("controller.api")

_STATUS_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    429: "TooManyRequests",
    500: "InternalError",
    503: "Unavailable",
}


class ApiProblem(Exception):
    """An error a route answers directly (status, code, message, extra body fields)."""

    def __init__(
        self, status: int, message: str, code: str | None = None,
        extra: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, "Error")
        self.message = message
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON of an error answer."""
    return {"error": {"code": code, "message": message}, **extra}


def error_response(
    status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error answer."""
    return JSONResponse(
        error_body(code or _STATUS_CODES.get(status, "Error"), message, **extra),
        status_code=status, headers=dict(headers or {}),
    )


def auth_error_response(exc: InvalidToken | PermissionDenied | RateLimitExceeded) -> JSONResponse:
    """401, 403 or 429 (with `Retry-After`) for an auth refusal."""
    if isinstance(exc, RateLimitExceeded):
        return error_response(429, str(exc), "RateLimited",
                              headers={"Retry-After": str(exc.retry_after_seconds)})
    if isinstance(exc, PermissionDenied):
        return error_response(403, str(exc), "Forbidden")
    return error_response(401, str(exc) or "invalid token", "Unauthorized",
                          headers={"WWW-Authenticate": "Bearer"})


def _location(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line for the first validation error (and how many more)."""
    if not errors:
        return "invalid request"
    first = errors[0]
    where = _location(first.get("loc", ()))
    source = next((str(p) for p in first.get("loc", ()) if p in ("query", "path", "header")), None)
    message = "unknown field" if first.get("type") == "extra_forbidden" else str(first.get("msg"))
    prefix = f"{source} parameter " if source else ""
    text = f"{prefix}{where}: {message}" if where else message
    more = len(errors) - 1
    return text + (f" (+{more} more)" if more else "")


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to the JSON error format."""

    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.headers, **exc.extra)

    @app.exception_handler(FarmError)
    async def _farm(_: Request, exc: FarmError) -> JSONResponse:
        return error_response(exc.status_code, str(exc), exc.code)

    @app.exception_handler(InvalidToken)
    async def _invalid(_: Request, exc: InvalidToken) -> JSONResponse:
        return auth_error_response(exc)

    @app.exception_handler(PermissionDenied)
    async def _denied(_: Request, exc: PermissionDenied) -> JSONResponse:
        return auth_error_response(exc)

    @app.exception_handler(RateLimitExceeded)
    async def _limited(_: Request, exc: RateLimitExceeded) -> JSONResponse:
        return auth_error_response(exc)

    @app.exception_handler(InvalidTokenRequest)
    async def _token_request(_: Request, exc: InvalidTokenRequest) -> JSONResponse:
        return error_response(422, str(exc), "ValidationError")

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the body is not valid JSON", "BadRequest")
        return error_response(422, describe_validation(errors), "ValidationError")

    @app.exception_handler(ValidationError)
    async def _pydantic(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(422, describe_validation(exc.errors()), "ValidationError")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else _STATUS_CODES.get(exc.status_code, "")
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("[API] Internal error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(500, "internal error (a bug); see the controller log", "InternalError")
