"""API authentication: tokens, roles and rate limits (SPEC section 7).

No web framework here: the API wraps `AuthManager` and maps its exceptions to
HTTP statuses (`InvalidToken` 401, `PermissionDenied` 403, `RateLimitExceeded` 429).
"""

from controller.auth.errors import (
    AuthError,
    InvalidToken,
    InvalidTokenRequest,
    PermissionDenied,
    RateLimitExceeded,
    TokenExpired,
    TokenRevoked,
    TooManyFailedAuthentications,
)
from controller.auth.manager import AuthManager
from controller.auth.ratelimit import FailedAuthLimiter, TokenBucketLimiter
from controller.auth.roles import (
    AUTH_DISABLED,
    ROLE_PERMISSIONS,
    Permission,
    Principal,
    Role,
    role_allows,
)
from controller.auth.tokens import TOKEN_PREFIX, IssuedToken, hash_token
from controller.store.tokens import TokenInfo

__all__ = [
    "AUTH_DISABLED",
    "ROLE_PERMISSIONS",
    "TOKEN_PREFIX",
    "AuthError",
    "AuthManager",
    "FailedAuthLimiter",
    "InvalidToken",
    "InvalidTokenRequest",
    "IssuedToken",
    "Permission",
    "PermissionDenied",
    "Principal",
    "RateLimitExceeded",
    "Role",
    "TokenBucketLimiter",
    "TokenExpired",
    "TokenInfo",
    "TokenRevoked",
    "TooManyFailedAuthentications",
    "hash_token",
    "role_allows",
]
