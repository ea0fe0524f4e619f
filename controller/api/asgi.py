"""What this package's ASGI middleware reads from a request's scope."""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> str | None:
    """The first header called `name` (lower case, as servers pass them), decoded as Latin-1.

    What starlette's `Headers(scope=scope).get(name)` finds, without building `Headers`
    on every request for the one header a middleware reads.
    """
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
