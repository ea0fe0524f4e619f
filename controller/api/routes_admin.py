"""Queue statistics, the audit log and API tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from controller.api.context import (
    Ctx,
    Cursor,
    Limit,
    as_utc,
    decode_cursor,
    encode_cursor,
)
from controller.api.errors import ApiProblem
from controller.api.schemas import (
    AuditOut,
    ErrorBody,
    Page,
    QueueStatsOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
)
from controller.api.security import require
from controller.auth.roles import Permission, Principal
from controller.store import views

router = APIRouter()

Reader = Annotated[Principal, require(Permission.READ)]
Admin = Annotated[Principal, require(Permission.MANAGE_TOKENS)]
_FILTER = Query(max_length=256)


@router.get("/queue/stats", response_model=QueueStatsOut, tags=["queue"], summary="Queue totals")
def queue_stats(ctx: Ctx, _: Reader) -> QueueStatsOut:
    """Jobs by status, and pending jobs by priority class."""
    with ctx.store.read() as session:
        return QueueStatsOut.model_validate(views.queue_stats(session))


@router.get("/audit", response_model=Page[AuditOut], tags=["audit"], summary="Audit log")
def audit(
    ctx: Ctx,
    _: Reader,
    entity_type: Annotated[str | None, Query(alias="entityType", max_length=64,
                                             description="`job`, `node`, `token`, ...")] = None,
    entity_id: Annotated[str | None, Query(alias="entityId", max_length=256,
                                           description="A job's or node's name.")] = None,
    event_type: Annotated[str | None, Query(alias="eventType", max_length=64,
                                            description="`job.transition`, ...")] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; naive times are UTC.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[AuditOut]:
    """Audit entries, oldest first."""
    for value in (entity_type, entity_id, event_type):
        if value is not None and "\x00" in value:
            raise ApiProblem(422, "query parameters must not contain NUL characters")
    with ctx.store.read() as session:
        items, after = views.list_audit(
            session, entity_type=entity_type, entity_id=entity_id, event_type=event_type,
            since=as_utc(since), limit=limit, after_id=decode_cursor(cursor),
        )
    return Page[AuditOut](items=[AuditOut.model_validate(e) for e in items],
                          next=encode_cursor(after) if after is not None else None)


@router.post("/auth/tokens", status_code=201, response_model=TokenCreated, tags=["auth"],
             summary="Create a token", responses={422: {"model": ErrorBody}})
def create_token(body: TokenCreate, ctx: Ctx, principal: Admin) -> TokenCreated:
    """Issue a token; the secret is in this answer only."""
    issued = ctx.auth.issue_token(
        body.client_id, body.role, body.node, body.expires_minutes, actor=principal.client_id,
        now=ctx.clock(),
    )
    return TokenCreated.model_validate(issued.to_dict())


@router.get("/auth/tokens", response_model=Page[TokenOut], tags=["auth"], summary="List tokens")
def list_tokens(
    ctx: Ctx, _: Admin,
    client_id: Annotated[str | None, Query(alias="clientId", max_length=128)] = None,
    limit: Limit = 100, cursor: Cursor = None,
) -> Page[TokenOut]:
    """Stored tokens, oldest first, expired and revoked ones until cleaned up; never secrets."""
    if client_id is not None and "\x00" in client_id:
        raise ApiProblem(422, "query parameters must not contain NUL characters")
    start = decode_cursor(cursor) or 0
    tokens = ctx.auth.list_tokens(client_id)
    more = start + limit < len(tokens)
    return Page[TokenOut](items=[TokenOut.model_validate(t) for t in tokens[start:start + limit]],
                          next=encode_cursor(start + limit) if more else None)


@router.delete(
    "/auth/tokens/{token_id}", status_code=204, response_class=Response, tags=["auth"],
    summary="Revoke a token", responses={404: {"model": ErrorBody, "description": "No such token."}},
)
def revoke_token(
    token_id: Annotated[str, Path(pattern=r"^tok_[0-9a-f]{1,64}$", description="`tok_...`")],
    ctx: Ctx, principal: Admin,
) -> Response:
    """Revoke a token (at once); revoking it again changes nothing."""
    if not ctx.auth.revoke(token_id, actor=principal.client_id, now=ctx.clock()):
        raise ApiProblem(404, f"token {token_id!r} not found", "NotFound")
    return Response(status_code=204)
