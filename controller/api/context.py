"""What every route reaches: the Farm, the store, auth, metrics and the long-poll registry."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from controller.api.errors import ApiProblem
from controller.api.longpoll import WorkNotifier
from controller.auth.manager import AuthManager
from controller.config import ControllerConfig
from controller.farm import Farm
from controller.manifests.schema import NAME_MAX, NAME_PATTERN
from controller.observability.metrics import Metrics
from controller.store.engine import Store

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass
class ApiContext:
    """The collaborators of the routes, built once per app."""

    farm: Farm
    auth: AuthManager
    metrics: Metrics
    notifier: WorkNotifier
    stopping: Callable[[], bool]
    clock: Callable[[], datetime]
    leader: Callable[[], bool] = lambda: True
    """True while this replica holds the leader lease (a lone controller always does)."""

    @property
    def store(self) -> Store:
        """The farm's store."""
        return self.farm.store

    @property
    def config(self) -> ControllerConfig:
        """The farm's config."""
        return self.farm.config


async def get_context(request: Request) -> ApiContext:
    """The app's `ApiContext` (a dependency)."""
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx


Ctx = Annotated[ApiContext, Depends(get_context)]

ObjectName = Annotated[
    str,
    Path(pattern=f"^{NAME_PATTERN}$", max_length=NAME_MAX, description="A `metadata.name`."),
]
Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (default {DEFAULT_LIMIT}).")
]
Cursor = Annotated[
    str | None,
    Query(max_length=64, description="The `next` value of the previous page (opaque)."),
]


def encode_cursor(position: int) -> str:
    """An opaque cursor for a list position (an id or an offset)."""
    return base64.urlsafe_b64encode(f"c:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The position a cursor stands for; 400 for a cursor this API did not make."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    prefix, _, digits = raw.partition(":")
    if prefix != "c" or not digits.isdigit() or len(digits) > 18:
        raise ApiProblem(400, "invalid cursor: pass the `next` value of a previous page", "BadRequest")
    return int(digits)


def as_utc(moment: datetime | None) -> datetime | None:
    """An aware UTC datetime (naive ones are taken as UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
