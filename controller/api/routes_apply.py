"""`POST /apply` (manifests from the API) and `GET /manifests` (the watched directory's status)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from controller.api.context import ApiContext, Ctx, Cursor, Limit, decode_cursor, encode_cursor
from controller.api.errors import ApiProblem, error_body
from controller.api.schemas import (
    ApplyConflict,
    ApplyResponse,
    ApplyResult,
    ErrorBody,
    ManifestFileOut,
    Page,
    storable,
)
from controller.api.security import require
from controller.auth.roles import Permission, Principal
from controller.manifests.loader import load_text
from controller.manifests.schema import Manifest
from controller.manifests.validate import validate_texts
from controller.sources.apply import Origin, Outcome
from controller.store.manifest_files import list_manifest_files

router = APIRouter(tags=["manifests"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
JSON_TYPES = ("application/json",)
_BODY = "body"
_APPLY_BODY: dict[str, Any] = {
    "required": True,
    "description": "Manifests: YAML (several documents with `---`) or JSON (one object, a "
    "list, or `{\"items\": [...]}`).",
    "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {
            "schema": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}
        },
    },
}


def _media_type(request: Request) -> str:
    raw = request.headers.get("content-type", "application/yaml")
    media = raw.split(";")[0].strip().lower()
    if media in YAML_TYPES or media in JSON_TYPES or media.endswith("+json"):
        return media
    raise ApiProblem(415, f"unsupported Content-Type {media!r}: send application/yaml or "
                     "application/json")


def _labelled(text: bytes) -> list[tuple[int, str | None, str | None]]:
    """(line, kind, name) of every document of the body, to name the objects of problems."""
    found = []
    for doc in load_text(text, _BODY, item_lists=True).documents:
        kind = doc.data.get("kind")
        metadata = doc.data.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        found.append((doc.line, kind if isinstance(kind, str) else None,
                      name if isinstance(name, str) else None))
    return found


def _apply(ctx: ApiContext, text: bytes, dry_run: bool, client_id: str) -> Response:
    report = validate_texts({_BODY: text}, item_lists=True)
    rows: list[tuple[int, ApplyResult | Manifest]] = []
    if report.problems:
        documents = _labelled(text)
        for problem in report.problems:
            owner = max((d for d in documents if d[0] <= problem.line), default=(0, None, None),
                        key=lambda d: d[0])
            error = f"line {problem.line}: " + (f"{problem.field}: " if problem.field else "")
            rows.append((problem.line, ApplyResult(kind=owner[1], name=owner[2], result="error",
                                                   error=error + problem.message, line=problem.line)))
    for parsed in report.objects:
        line = parsed.document.line
        unstorable = storable(parsed.document.data)
        if unstorable:
            rows.append((line, ApplyResult(kind=parsed.kind, name=parsed.name, result="error",
                                           error=f"line {line}: {unstorable}", line=line)))
        else:
            rows.append((line, parsed.manifest))
    rows.sort(key=lambda r: r[0])
    manifests = [m for _, m in rows if not isinstance(m, ApplyResult)]
    applied = iter(ctx.farm.apply(manifests, Origin("api", None, client_id), dry_run=dry_run))
    results: list[ApplyResult] = []
    conflicts: list[str] = []
    for _, row in rows:
        if isinstance(row, ApplyResult):
            results.append(row)
            continue
        outcome = next(applied)
        results.append(ApplyResult(kind=outcome.kind, name=outcome.name,
                                   result=outcome.result.value,
                                   error=outcome.error))
        if outcome.result is Outcome.ERROR and outcome.conflict:
            conflicts.append(f"{outcome.kind}/{outcome.name}: {outcome.error}")
    if conflicts:
        dumped = [r.model_dump(by_alias=True) for r in results]
        return JSONResponse(error_body("Conflict", "; ".join(conflicts), results=dumped),
                            status_code=409)
    # Encoded by pydantic in one go (a body holds up to thousands of results).
    return Response(ApplyResponse(results=results, dry_run=dry_run).model_dump_json(),
                    media_type="application/json")


@router.post(
    "/apply", response_model=ApplyResponse, summary="Apply manifests",
    openapi_extra={"requestBody": _APPLY_BODY},
    responses={
        409: {"model": ApplyConflict,
              "description": "An object is owned by a file (named) or may no longer change; the "
              "other objects were applied as their results say."},
        413: {"model": ErrorBody, "description": "Body over `server.maxBodyBytes`."},
        415: {"model": ErrorBody, "description": "Neither YAML nor JSON."},
    },
)
async def apply(
    request: Request,
    ctx: Ctx,
    principal: Annotated[Principal, require(Permission.APPLY_MANIFESTS)],
    dry_run: Annotated[bool, Query(alias="dryRun", description="Judge and diff, change nothing.")]
    = False,
) -> Response:
    """Create or update Scenarios, Nodes and Jobs (object source `api`); a result per object."""
    _media_type(request)
    text = await request.body()
    return await run_in_threadpool(_apply, ctx, text, dry_run, principal.client_id)


@router.get("/manifests", response_model=Page[ManifestFileOut], summary="Watched files' status")
def list_manifests(
    ctx: Ctx, _: Annotated[Principal, require(Permission.READ)], limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[ManifestFileOut]:
    """Per-file status of the watched directory (ok, invalid, conflict), by path."""
    start = decode_cursor(cursor) or 0
    with ctx.store.read() as session:
        files = list_manifest_files(session)
    page = files[start:start + limit]
    more = start + limit < len(files)
    return Page[ManifestFileOut](
        items=[ManifestFileOut.model_validate(f.to_json()) for f in page],
        next=encode_cursor(start + limit) if more else None,
    )
