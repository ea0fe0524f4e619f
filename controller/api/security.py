"""Authentication (an ASGI middleware) and authorization (a dependency per route).

The middleware runs before routing and before any body is read: a request without
a valid token gets its 401 (or 429) without the controller parsing what it sent.
It leaves the `Principal` in `request.state.principal`; each route then asks for
its `Permission` with `require(...)`, which answers 403 for a role that may not.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.api.asgi import header
from controller.api.errors import auth_error_response
from controller.auth.errors import InvalidToken, PermissionDenied, RateLimitExceeded
from controller.auth.manager import AuthManager
from controller.auth.roles import AUTH_DISABLED, Permission, Principal, role_allows

PRINCIPAL = "principal"


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


class AuthMiddleware:
    """Authenticates every request but the public paths; rate-limits per client and address."""

    def __init__(
        self,
        app: ASGIApp,
        auth: AuthManager,
        public_paths: frozenset[str],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.app = app
        self.auth = auth
        self.public_paths = public_paths
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401/429 itself, or pass the request on with its principal."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.auth.enabled:
            state[PRINCIPAL] = AUTH_DISABLED
        elif scope["path"] in self.public_paths:
            state[PRINCIPAL] = None
        else:
            token = _bearer(header(scope, b"authorization"))
            client = scope.get("client")
            address = str(client[0]) if client else "unknown"
            try:
                # A token seen in the last seconds is checked in memory, on the event loop;
                # a lookup or a refusal goes to a thread (it may read or write the database).
                principal = self.authenticate_cached(token, address)
                if principal is None:
                    principal = await run_in_threadpool(self.authenticate, token, address)
                state[PRINCIPAL] = principal
            except (InvalidToken, RateLimitExceeded) as exc:
                await auth_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def authenticate_cached(self, token: str | None, address: str) -> Principal | None:
        """The principal of a recently seen token, its rate limit spent; None: not in memory."""
        if token is None:
            return None
        now = self.clock()
        principal = self.auth.authenticate_cached(token, remote_address=address, now=now)
        if principal is not None:
            self.auth.check_rate_limit(principal.client_id, now=now)
        return principal

    def authenticate(self, token: str | None, address: str) -> Principal:
        """The principal of `token` from `address`, its rate limit spent (runs in a thread)."""
        now = self.clock()
        if token is None:
            self.auth.check_address(address, now=now)
            self.auth.record_failed_auth(address, now=now)
            raise InvalidToken("missing bearer token: send `Authorization: Bearer <token>`")
        principal = self.auth.authenticate(token, remote_address=address, now=now)
        self.auth.check_rate_limit(principal.client_id, now=now)
        return principal


def current_principal(request: Request) -> Principal:
    """The authenticated principal of this request (the anonymous admin when auth is off)."""
    principal = getattr(request.state, PRINCIPAL, None)
    if principal is None:
        # A public route has no principal; a guarded route without one is a wiring bug.
        raise InvalidToken("this route needs a bearer token")
    assert isinstance(principal, Principal)
    return principal


def require(permission: Permission) -> Any:
    """A route dependency: 403 unless the principal's role grants `permission`.

    Worker reports are further bound to the token's node by the route itself
    (`Principal.require(permission, node)`), which knows the node.
    """

    # async: it does no I/O, and a sync dependency would cost a thread-pool hop per request.
    async def dependency(request: Request) -> Principal:
        principal = current_principal(request)
        if not role_allows(principal.role, permission):
            raise PermissionDenied(
                f"role {principal.role.value!r} of client {principal.client_id!r} may not "
                f"{permission.value}"
            )
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the route matrix
    return Depends(dependency)


def route_permission(dependency: Any) -> Permission | None:
    """The permission a `require(...)` dependency callable guards (None for anything else)."""
    value = getattr(dependency, "permission", None)
    return value if isinstance(value, Permission) else None
