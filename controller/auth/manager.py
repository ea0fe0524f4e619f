"""`AuthManager`: issue, authenticate, rate-limit, revoke and clean up API tokens.

The seed's surface is kept (`generate_token(client_id)` returns the token string,
`validate_token(token)` returns the client id, `check_rate_limit(client_id)`), with
`issue_token` and `authenticate` as the richer calls the API uses. The manager
knows nothing of HTTP: the API maps `InvalidToken` to 401, `PermissionDenied` to
403 and `RateLimitExceeded` to 429 with `Retry-After: retry_after_seconds`.

Every method that depends on time takes `now` (default: the wall clock, in UTC).
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from datetime import UTC, datetime, timedelta

from controller.auth.cache import TOKEN_CACHE_TTL, TokenCache
from controller.auth.errors import (
    InvalidToken,
    InvalidTokenRequest,
    RateLimitExceeded,
    TokenExpired,
    TokenRevoked,
)
from controller.auth.ratelimit import FailedAuthLimiter, TokenBucketLimiter
from controller.auth.roles import Principal, Role
from controller.auth.tokens import (
    IssuedToken,
    hash_token,
    is_well_formed,
    new_token,
    new_token_id,
)
from controller.config import AuthConfig
from controller.observability.metrics import Metrics
from controller.store import tokens as token_store
from controller.store.audit import write_audit
from controller.store.engine import Store
from controller.store.group import GroupCommit, Written
from controller.store.tokens import TokenInfo

log = logging.getLogger("controller.auth")

MAX_EXPIRES_MINUTES = 10 * 366 * 24 * 60
"""Ten years: a longer lifetime is refused (and far past any sane rotation policy)."""
_CLIENT_ID_MAX = 128  # the column's width
CACHE_REFRESH_SECONDS = 5.0
"""How often the refresher reads again the cached tokens in use that are half their TTL old."""
_REFRESH_CHUNK = 500
"""Tokens per read of the refresher (about 6 ms of work each here for 500)."""
_NODE_MAX = 63  # a metadata.name


def _utcnow(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware UTC time")
    return now.astimezone(UTC)


class AuthManager:
    """Tokens in the database, limiters in memory; one per controller process."""

    def __init__(self, db: Store, config: AuthConfig, metrics: Metrics | None = None) -> None:
        self.db = db
        self.config = config
        self.metrics = metrics
        self.rate_limiter = TokenBucketLimiter(config.rate_limit_per_minute)
        self.failed_auth_limiter = FailedAuthLimiter(config.failed_auth_per_minute)
        self.token_cache = TokenCache()
        self.writer: GroupCommit | None = None
        """Where `last_used_at` writes go without waiting (the API's group-commit writer);
        None: each is written in a transaction of its own, before the request goes on."""
        self._refresher: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def enabled(self) -> bool:
        """`auth.enabled`: whether the API asks for tokens at all (the manager works either way)."""
        return self.config.enabled

    # -- issuing -----------------------------------------------------------------

    def issue_token(
        self,
        client_id: str,
        role: Role | str,
        node: str | None = None,
        expires_minutes: float | None = None,
        *,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> IssuedToken:
        """Create a token (audited `token.created`); its secret is only in the result.

        `role` has no default here: whoever mints a token through the API or the CLI
        says what it may do. `actor` is the client id that asked (audit `clientId`).
        """
        now = _utcnow(now)
        role, node, minutes = self._checked_request(client_id, role, node, expires_minutes)
        token = new_token()
        issued = IssuedToken(
            id=new_token_id(),
            token=token,
            client_id=client_id,
            role=role,
            node=node,
            expires_at=now + timedelta(minutes=minutes),
        )
        with self.db.write() as session:
            token_store.insert_token(
                session,
                token_id=issued.id,
                client_id=client_id,
                token_hash=hash_token(token),
                role=role.value,
                node=node,
                expires_at=issued.expires_at,
                created_at=now,
            )
            # Never the token nor its hash: the audit log is readable by every viewer.
            details = {
                "clientId": client_id,
                "role": role.value,
                "node": node,
                "expiresAt": issued.to_dict()["expiresAt"],
            }
            write_audit(session, "token.created", "token", issued.id, details, now, actor)
        log.info(
            "[Auth] Created token %s for client %s (role %s%s, expires %s)",
            issued.id, client_id, role.value, f", node {node}" if node else "",
            details["expiresAt"],
        )
        self._refresh_token_gauge(now)
        return issued

    def generate_token(
        self,
        client_id: str,
        role: Role | str = Role.ADMIN,
        node: str | None = None,
        expires_minutes: float | None = None,
        *,
        now: datetime | None = None,
    ) -> str:
        """The seed's call: create a token and return its string.

        The role defaults to `admin` because every seed token could do everything;
        new code should call `issue_token` with an explicit role.
        """
        return self.issue_token(client_id, role, node, expires_minutes, now=now).token

    def _checked_request(
        self, client_id: str, role: Role | str, node: str | None, expires_minutes: float | None
    ) -> tuple[Role, str | None, float]:
        """Validate a token request; returns the role, node and lifetime in minutes."""
        if not client_id or len(client_id) > _CLIENT_ID_MAX:
            raise InvalidTokenRequest(f"clientId must be 1 to {_CLIENT_ID_MAX} characters")
        try:
            checked_role = Role(role)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidTokenRequest(f"unknown role {role!r} (one of {known})") from None
        if checked_role is Role.WORKER:
            if not node:
                raise InvalidTokenRequest("a worker token needs the node it reports for")
            if len(node) > _NODE_MAX:
                raise InvalidTokenRequest(f"node must be at most {_NODE_MAX} characters")
        elif node is not None:
            raise InvalidTokenRequest(f"only worker tokens are bound to a node, not {role!r}")
        minutes = self.config.token_expiry_minutes if expires_minutes is None else expires_minutes
        # bool is an int: `expiresMinutes: true` must not mean one minute.
        if isinstance(minutes, bool) or not isinstance(minutes, int | float):
            raise InvalidTokenRequest("expiresMinutes must be a number")
        if not math.isfinite(minutes) or not 0 < minutes <= MAX_EXPIRES_MINUTES:
            raise InvalidTokenRequest(
                f"expiresMinutes must be greater than 0 and at most {MAX_EXPIRES_MINUTES}"
            )
        return checked_role, node, float(minutes)

    # -- authenticating ----------------------------------------------------------

    def authenticate(
        self, token: str, *, remote_address: str | None = None, now: datetime | None = None
    ) -> Principal:
        """Who `token` belongs to; raises `InvalidToken` (or `TokenExpired`, `TokenRevoked`).

        With `remote_address`, an address refused by the failed-authentication
        limit gets `TooManyFailedAuthentications` (429) before the token is even
        looked at, and every refused token counts against its address.
        """
        now = _utcnow(now)
        if remote_address is not None:
            self.check_address(remote_address, now=now)
        try:
            return self._authenticate(token, now)
        except InvalidToken as exc:
            if self.metrics is not None:
                self.metrics.invalid_tokens.inc()
            log.debug("[Auth] Refused token: %s", exc)
            if remote_address is not None:
                self.record_failed_auth(remote_address, now=now)
            raise

    def _authenticate(self, token: str, now: datetime) -> Principal:
        if not isinstance(token, str) or not is_well_formed(token):
            raise InvalidToken("malformed token")
        digest = hash_token(token)
        cached = self.token_cache.get(digest, now)
        if cached is None:
            with self.db.read() as session:
                stored = token_store.find_token_by_hash(session, digest)
        else:
            stored = cached
        # The lookup is by the SHA-256 of what was presented, never by the token:
        # whatever the database's index comparison leaks through timing is about
        # hashes, and knowing how a hash of a guess compares with a stored hash does
        # not help find a token with that hash (preimage resistance). compare_digest
        # then makes the final decision in constant time, and guards against a
        # lookup that matched loosely (a case- or pad-insensitive collation).
        if stored is None or not hmac.compare_digest(stored.token_hash, digest):
            raise InvalidToken("unknown token")
        if stored.revoked_at is not None:
            raise TokenRevoked(f"token {stored.id} was revoked")
        if now >= stored.expires_at:
            raise TokenExpired(f"token {stored.id} expired")
        # Only a live token is cached; a cached one is checked for expiry above every time.
        if cached is None:
            self.token_cache.put(digest, stored, now)
        if self._touch_due(stored, now) and not self._queue_touch(stored, digest, now):
            with self.db.write() as session:
                token_store.touch_token(session, stored.id, now)
            self.token_cache.touched(digest, now)
        return Principal(
            client_id=stored.client_id, role=Role(stored.role), node=stored.node, token_id=stored.id
        )

    def authenticate_cached(
        self, token: str, *, remote_address: str | None = None, now: datetime | None = None
    ) -> Principal | None:
        """`authenticate` for a token this process looked up recently, without the database.

        None when only the full `authenticate` can answer (a token not cached or
        refused, or due for a `last_used_at` write that can't be queued): the caller then
        runs that, off the event loop. It never refuses a token itself, so every refusal
        is counted in one place.
        """
        now = _utcnow(now)
        if not isinstance(token, str) or not is_well_formed(token):
            return None
        digest = hash_token(token)
        stored = self.token_cache.get(digest, now)
        if (
            stored is None
            or not hmac.compare_digest(stored.token_hash, digest)
            or stored.revoked_at is not None
            or now >= stored.expires_at
        ):
            return None
        touch = self._touch_due(stored, now)
        if touch and self.writer is None:
            return None
        if remote_address is not None:
            self.check_address(remote_address, now=now)
        if touch and not self._queue_touch(stored, digest, now):
            return None  # the writer is closed (shutting down): written by `authenticate`
        return Principal(
            client_id=stored.client_id, role=Role(stored.role), node=stored.node, token_id=stored.id
        )

    @staticmethod
    def _touch_due(stored: token_store.StoredToken, now: datetime) -> bool:
        last = stored.last_used_at
        return last is None or now - last >= token_store.LAST_USED_RESOLUTION

    def _queue_touch(self, stored: token_store.StoredToken, digest: str, now: datetime) -> bool:
        """Queue the token's `last_used_at` write (at most once a minute, see touch_token) to
        join other requests' transaction; the request does not wait for it: when a token was
        last used is a record, not a guard. False without a writer, or once it is closed."""
        token_id = stored.id
        queued: Written[None] | None = self.writer.submit(
            lambda session: token_store.touch_token(session, token_id, now),
            key=("token", token_id), savepoint=False,
        ) if self.writer is not None else None
        if queued is None:
            return False
        self.token_cache.touched(digest, now)
        return True

    # -- the cache's refresher ---------------------------------------------------

    def refresh_cache(self, *, now: datetime | None = None) -> int:
        """Read again, in bulk, the cached tokens in use that are half their TTL old.

        Returns how many were read. A token found revoked (elsewhere), expired or gone
        leaves the cache, so that the next request is refused as it would be after its
        own lookup.
        """
        now = _utcnow(now)
        due = self.token_cache.due(now, TOKEN_CACHE_TTL / 2)
        for start in range(0, len(due), _REFRESH_CHUNK):
            if start:
                time.sleep(0)  # a few ms of work per chunk: let the requests' threads in
            chunk = due[start:start + _REFRESH_CHUNK]
            with self.db.read() as session:
                found = token_store.find_tokens_by_hashes(session, chunk)
            self.token_cache.refreshed(chunk, found, now)
        return len(due)

    def start(self, interval: float = CACHE_REFRESH_SECONDS) -> None:
        """Start the cache's refresher thread (a serving controller; idempotent)."""
        if self._refresher is not None and self._refresher.is_alive():
            return
        self._stopping.clear()
        self._refresher = threading.Thread(target=self._refresh_loop, args=(interval,),
                                           name="ffrtmp-token-cache", daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        """Stop the refresher thread."""
        self._stopping.set()
        if self._refresher is not None:
            self._refresher.join(10)
            self._refresher = None

    def _refresh_loop(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                self.refresh_cache()
            except Exception:  # a database hiccup: requests look tokens up themselves meanwhile
                log.exception("[Auth] Refreshing the token cache failed")

    def validate_token(self, token: str, *, now: datetime | None = None) -> str:
        """The seed's call: the client id of a valid token, or `InvalidToken`/`TokenExpired`."""
        return self.authenticate(token, now=now).client_id

    # -- rate limits -------------------------------------------------------------

    def check_rate_limit(self, client_id: str, *, now: datetime | None = None) -> None:
        """Spend one request of `client_id`'s bucket, or raise `RateLimitExceeded`."""
        try:
            self.rate_limiter.acquire(client_id, _utcnow(now))
        except RateLimitExceeded:
            self._count_refusal()
            log.debug("[Auth] Rate limit exceeded for client %s", client_id)
            raise

    def check_address(self, remote_address: str, *, now: datetime | None = None) -> None:
        """Raise `TooManyFailedAuthentications` while `remote_address` is refused."""
        try:
            self.failed_auth_limiter.check(remote_address, _utcnow(now))
        except RateLimitExceeded:
            self._count_refusal()
            raise

    def record_failed_auth(self, remote_address: str, *, now: datetime | None = None) -> None:
        """Count a failed authentication from `remote_address` (e.g. a missing header)."""
        failures = self.failed_auth_limiter.record_failure(remote_address, _utcnow(now))
        if failures == self.config.failed_auth_per_minute + 1:
            # Once per window, when the address crosses the limit.
            log.warning(
                "[Auth] Too many failed authentications from %s (%d in a minute): refusing it",
                remote_address, failures,
            )

    def _count_refusal(self) -> None:
        if self.metrics is not None:
            self.metrics.rate_limit_exceeded.inc()

    # -- lifecycle ---------------------------------------------------------------

    def revoke(
        self, token_id: str, *, actor: str | None = None, now: datetime | None = None
    ) -> bool:
        """Revoke a token by id (audited `token.revoked`); False if no such token exists.

        Revoking a revoked token is accepted and changes nothing (no second audit row).
        """
        now = _utcnow(now)
        try:
            with self.db.write() as session:
                info = token_store.get_token(session, token_id)
                if info is None:
                    return False
                if info.revoked_at is not None:
                    return True
                token_store.revoke_token(session, token_id, now)
                details = {"clientId": info.client_id, "role": info.role, "node": info.node}
                write_audit(session, "token.revoked", "token", token_id, details, now, actor)
        finally:
            # After the commit: from here on this process refuses the token (no 5 s grace).
            self.token_cache.forget(token_id)
        log.info("[Auth] Revoked token %s of client %s", token_id, info.client_id)
        self._refresh_token_gauge(now)
        return True

    def list_tokens(self, client_id: str | None = None) -> list[TokenInfo]:
        """Stored tokens, oldest first (expired ones until cleaned up); never their hashes."""
        with self.db.read() as session:
            return token_store.list_tokens(session, client_id)

    def count_active_tokens(self, *, now: datetime | None = None) -> int:
        """Tokens neither expired nor revoked at `now`."""
        with self.db.read() as session:
            return token_store.count_active_tokens(session, _utcnow(now))

    def cleanup_expired(self, *, now: datetime | None = None) -> int:
        """Delete expired tokens (revoked ones included once expired); returns how many."""
        now = _utcnow(now)
        with self.db.write() as session:
            deleted = token_store.delete_expired_tokens(session, now)
        if deleted:
            log.info("[Auth] Cleaned up %d expired tokens", deleted)
        self._refresh_token_gauge(now)
        return deleted

    def _refresh_token_gauge(self, now: datetime) -> None:
        if self.metrics is not None:
            self.metrics.auth_tokens.set(self.count_active_tokens(now=now))
