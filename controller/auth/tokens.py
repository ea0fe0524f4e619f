"""Token format: `ffr_` + 32 random bytes (URL-safe base64), stored only as SHA-256 hex.

A token is a bearer secret shown once, at creation. Its public id (`tok_` + 12 hex
digits) names it in lists, audit rows, logs and `DELETE /auth/tokens/{id}`; the id
reveals nothing about the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.auth.roles import Role

TOKEN_PREFIX = "ffr_"  # noqa: S105 - a public prefix, not a secret
TOKEN_BYTES = 32
TOKEN_ID_PREFIX = "tok_"  # noqa: S105 - a public prefix, not a secret
_TOKEN_ID_BYTES = 6  # 12 hex digits: 48 bits, enough to never collide among live tokens
MAX_TOKEN_LENGTH = 256
"""Longer strings are refused before hashing: real tokens are 47 characters."""


def new_token() -> str:
    """A fresh secret token: `ffr_` + 32 random bytes from `secrets`, base64url (47 chars)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def new_token_id() -> str:
    """A fresh public token id, e.g. `tok_3f9a0c12be47`."""
    return TOKEN_ID_PREFIX + secrets.token_hex(_TOKEN_ID_BYTES)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored.

    A plain (unsalted, fast) hash is enough: the token carries 256 bits of
    randomness, so there is no dictionary to precompute and nothing to brute force;
    salts and slow hashes exist for low-entropy passwords.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_well_formed(token: str) -> bool:
    """True when `token` could be one of ours (prefix, sane length); cheap pre-check."""
    return token.startswith(TOKEN_PREFIX) and len(token) <= MAX_TOKEN_LENGTH


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just created: the only time its secret is available."""

    id: str
    token: str
    client_id: str
    role: Role
    node: str | None
    expires_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The `POST /auth/tokens` answer: id, token, clientId, role, node, expiresAt."""
        return {
            "id": self.id,
            "token": self.token,
            "clientId": self.client_id,
            "role": self.role.value,
            "node": self.node,
            "expiresAt": _iso(self.expires_at),
        }

    def __repr__(self) -> str:
        # Keep the secret out of reprs (tracebacks, debuggers, log lines).
        return (
            f"IssuedToken(id={self.id!r}, token='ffr_***', client_id={self.client_id!r}, "
            f"role={self.role.value!r}, node={self.node!r}, expires_at={self.expires_at!r})"
        )
