"""`TokenCache`: recent successful token lookups, so most requests skip the database.

An entry lives `TOKEN_CACHE_TTL` (30 s) from its lookup. A revocation made by this
process drops its entries at once (`AuthManager.revoke`); one made elsewhere (the
`ffrtmp token revoke` command, another replica) takes effect here within the TTL.
Expiry is not cached: the caller checks the entry's `expires_at` on every request.

Tokens in use are read again before their entry runs out, in bulk, by the manager's
refresher (`due` and `refreshed`): one query per 500 tokens every few seconds, instead
of one read (and a thread hop) per token and TTL on the request path. With 10,000
workers beating every 10 s that was one beat in three.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from controller.store.tokens import StoredToken

TOKEN_CACHE_TTL = timedelta(seconds=30)
"""How long a successful lookup is trusted; bounds how late a remote revocation is seen.

Longer than a worker's heartbeat interval (10 s by default), so that most beats of a
worker find its token here: with 5 s, every beat of every worker read the database.
"""
TOKEN_CACHE_SIZE = 16_384
"""At most this many tokens are cached (one per worker, plus people and pipelines; a
few MiB at most); the least recently used one goes first."""


@dataclass(slots=True)
class _Entry:
    token: StoredToken
    looked_up_at: datetime
    used: bool = False
    """Asked for since it was looked up (only such entries are read again ahead of time)."""


class TokenCache:
    """Stored tokens by hash, for `TOKEN_CACHE_TTL`; thread-safe (the API runs in a pool)."""

    def __init__(self, ttl: timedelta = TOKEN_CACHE_TTL, size: int = TOKEN_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, now: datetime) -> StoredToken | None:
        """The token looked up under `digest` less than the TTL before `now`, else None."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            # A clock that went back cannot prove the entry fresh either.
            if not entry.looked_up_at <= now < entry.looked_up_at + self.ttl:
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            entry.used = True
            return entry.token

    def put(self, digest: str, token: StoredToken, now: datetime) -> None:
        """Remember a successful lookup of `token` made at `now`."""
        with self._lock:
            self._entries[digest] = _Entry(token, now)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def touched(self, digest: str, last_used_at: datetime) -> None:
        """Record that the token's `last_used_at` was written, keeping its lookup time."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                entry.token = replace(entry.token, last_used_at=last_used_at)

    def due(self, now: datetime, age: timedelta) -> list[str]:
        """Entries looked up at least `age` before `now` and used since: to be read again."""
        with self._lock:
            return [d for d, e in self._entries.items() if e.used and e.looked_up_at <= now - age]

    def refreshed(self, asked: list[str], found: dict[str, StoredToken], read_at: datetime) -> None:
        """Apply a bulk read of `asked` (begun at `read_at`): live tokens stay, fresh from then.

        A token found revoked, expired or not at all is dropped (the next request looks
        it up and is refused). An entry dropped while the read ran (a revocation here)
        is not brought back.
        """
        with self._lock:
            for digest in asked:
                entry = self._entries.get(digest)
                if entry is None:
                    continue
                token = found.get(digest)
                if token is None or not token.is_active(read_at):
                    del self._entries[digest]
                elif read_at > entry.looked_up_at:
                    # A `last_used_at` queued here may not be committed yet: keep the later.
                    kept = entry.token.last_used_at
                    if kept is not None and (token.last_used_at is None or token.last_used_at < kept):
                        token = replace(token, last_used_at=kept)
                    self._entries[digest] = _Entry(token, read_at)

    def forget(self, token_id: str) -> None:
        """Drop every entry of the token `token_id` (it was revoked here)."""
        with self._lock:
            for digest in [d for d, e in self._entries.items() if e.token.id == token_id]:
                del self._entries[digest]

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
