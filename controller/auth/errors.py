"""What authentication and authorization refuse with; the API maps them to 401, 403 and 429."""

from __future__ import annotations


class AuthError(Exception):
    """Base of every auth refusal."""


class InvalidToken(AuthError):
    """The token is missing, malformed, unknown or revoked (HTTP 401)."""


class TokenRevoked(InvalidToken):
    """The token was revoked (HTTP 401, like any other invalid token)."""


class TokenExpired(InvalidToken):
    """The token is past its expiry (HTTP 401).

    A subclass of `InvalidToken` so that one `except InvalidToken` answers 401 for
    every unusable token, while callers that care can still tell expiry apart.
    """


class PermissionDenied(AuthError):
    """The token is valid but its role may not do this (HTTP 403)."""


class RateLimitExceeded(AuthError):
    """Too many requests from a client, or failed authentications from an address (HTTP 429)."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        # Whole seconds, at least 1: the value of the `Retry-After` header.
        self.retry_after_seconds = max(1, int(retry_after_seconds))


class TooManyFailedAuthentications(RateLimitExceeded):
    """The remote address failed to authenticate too often this minute (HTTP 429)."""


class InvalidTokenRequest(ValueError):
    """A token cannot be issued as asked (unknown role, worker without node, ...): HTTP 422."""
