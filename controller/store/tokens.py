"""The SQL of API tokens (`auth_tokens`): named queries over the caller's session.

Only hashes are stored; nothing here ever sees a token itself. Times are aware UTC
datetimes (`UTCDateTime` turns them into naive UTC text on SQLite, so the string
comparisons SQLite does on them order correctly). A token is expired from
`expires_at` on: it is valid while `now < expires_at`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from controller.store.models import AuthToken
from controller.store.prepared import Prepared

_tokens: sa.Table = AuthToken.__table__  # type: ignore[attr-defined]

LAST_USED_RESOLUTION = timedelta(seconds=60)
"""`last_used_at` is only rewritten when the stored value is at least this old.

Authentication runs on every request; writing the row each time would turn every
read request into a write transaction (on SQLite, a trip through the single write
lock). Knowing when a token was last used to the minute is all an operator needs.
"""

_INFO_COLUMNS = (
    _tokens.c.id,
    _tokens.c.client_id,
    _tokens.c.role,
    _tokens.c.node,
    _tokens.c.expires_at,
    _tokens.c.created_at,
    _tokens.c.last_used_at,
    _tokens.c.revoked_at,
)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token as operators may see it: everything but the hash."""

    id: str
    client_id: str
    role: str
    node: str | None
    expires_at: datetime
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def is_active(self, now: datetime) -> bool:
        """True when the token is neither revoked nor expired at `now`."""
        return self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True, slots=True)
class StoredToken(TokenInfo):
    """A stored token with its hash, as found by `find_token_by_hash`."""

    token_hash: str


def insert_token(
    session: Session,
    *,
    token_id: str,
    client_id: str,
    token_hash: str,
    role: str,
    node: str | None,
    expires_at: datetime,
    created_at: datetime,
) -> None:
    """Insert one token row."""
    session.execute(
        sa.insert(_tokens).values(
            id=token_id,
            client_id=client_id,
            token_hash=token_hash,
            role=role,
            node=node,
            expires_at=expires_at,
            created_at=created_at,
        )
    )


def find_token_by_hash(session: Session, token_hash: str) -> StoredToken | None:
    """The token whose SHA-256 is `token_hash` (unique index), revoked or expired included."""
    row = _BY_HASH.first(session.connection(), token_hash=token_hash)
    if row is None:
        return None
    return StoredToken(*row)


def find_tokens_by_hashes(session: Session, token_hashes: Sequence[str]) -> dict[str, StoredToken]:
    """The stored tokens among `token_hashes` (revoked or expired included), by hash.

    One `IN` list: the caller keeps it to a few hundred hashes.
    """
    rows = session.execute(sa.select(*_INFO_COLUMNS, _tokens.c.token_hash)
                           .where(_tokens.c.token_hash.in_(list(token_hashes))))
    return {token.token_hash: token for token in (StoredToken(*row) for row in rows)}


# Every request whose token is not in the cache reads it: prepared once.
_BY_HASH = Prepared(lambda _: sa.select(*_INFO_COLUMNS, _tokens.c.token_hash)
                    .where(_tokens.c.token_hash == sa.bindparam("token_hash")))


def get_token(session: Session, token_id: str) -> TokenInfo | None:
    """The token with this public id, without its hash."""
    row = session.execute(sa.select(*_INFO_COLUMNS).where(_tokens.c.id == token_id)).one_or_none()
    return None if row is None else TokenInfo(*row)


def list_tokens(session: Session, client_id: str | None = None) -> list[TokenInfo]:
    """Every stored token (oldest first), optionally of one client; hashes are not read."""
    query = sa.select(*_INFO_COLUMNS).order_by(_tokens.c.created_at, _tokens.c.id)
    if client_id is not None:
        query = query.where(_tokens.c.client_id == client_id)
    return [TokenInfo(*row) for row in session.execute(query)]


def revoke_token(session: Session, token_id: str, now: datetime) -> bool:
    """Mark a token revoked at `now`; True if it exists (a second revoke keeps the first time)."""
    result = session.execute(
        sa.update(_tokens)
        .where(_tokens.c.id == token_id)
        .values(revoked_at=sa.func.coalesce(_tokens.c.revoked_at, now))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def touch_token(session: Session, token_id: str, now: datetime) -> bool:
    """Set `last_used_at = now` unless it was set less than `LAST_USED_RESOLUTION` ago.

    The condition lives in the WHERE clause, so concurrent requests of one token
    write the row at most once per resolution. Returns whether the row was written.
    """
    return _TOUCH.execute(session.connection(), token_id=token_id, now=now,
                          cutoff=now - LAST_USED_RESOLUTION) > 0


_TOUCH = Prepared(lambda _: sa.update(_tokens).where(
    _tokens.c.id == sa.bindparam("token_id"),
    sa.or_(_tokens.c.last_used_at.is_(None),
           _tokens.c.last_used_at <= sa.bindparam("cutoff", type_=_tokens.c.last_used_at.type)),
).values(last_used_at=sa.bindparam("now", type_=_tokens.c.last_used_at.type)))


def delete_expired_tokens(session: Session, now: datetime) -> int:
    """Delete every token expired at `now` (revoked ones included) in one statement."""
    result = session.execute(sa.delete(_tokens).where(_tokens.c.expires_at <= now))
    return int(result.rowcount)  # type: ignore[attr-defined]


def count_active_tokens(session: Session, now: datetime) -> int:
    """How many tokens are neither revoked nor expired at `now`."""
    count = session.execute(
        sa.select(sa.func.count())
        .select_from(_tokens)
        .where(_tokens.c.revoked_at.is_(None), _tokens.c.expires_at > now)
    ).scalar_one()
    return int(count)
