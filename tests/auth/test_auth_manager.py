"""AuthManager against a real database (SQLite and PostgreSQL): the seed's cases and more."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from freezegun import freeze_time

from controller.auth import (
    AuthManager,
    InvalidToken,
    InvalidTokenRequest,
    Principal,
    RateLimitExceeded,
    Role,
    TokenExpired,
    TokenRevoked,
    TooManyFailedAuthentications,
)
from controller.auth.cache import TOKEN_CACHE_TTL, TokenCache
from controller.config import AuthConfig
from controller.observability.metrics import Metrics
from controller.store.engine import Store
from controller.store.group import GroupCommit
from controller.store.models import AuditLog, AuthToken
from controller.store.tokens import StoredToken

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def auth(store: Store, metrics: Metrics) -> AuthManager:
    return AuthManager(store, AuthConfig(), metrics=metrics)


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def _rows(store: Store) -> list[AuthToken]:
    with store.read() as session:
        rows = list(session.execute(sa.select(AuthToken)).scalars())
        session.expunge_all()  # keep them readable after the read transaction ends
        return rows


def _audit(store: Store) -> list[AuditLog]:
    with store.read() as session:
        rows = list(session.execute(sa.select(AuditLog).order_by(sa.text("id"))).scalars())
        session.expunge_all()
        return rows


# -- the seed's cases ------------------------------------------------------------------


def test_generate_token_returns_a_prefixed_random_token(auth: AuthManager) -> None:
    first = auth.generate_token("ci", now=T0)
    second = auth.generate_token("ci", now=T0)
    assert isinstance(first, str)
    assert first.startswith("ffr_")
    assert len(first) == 4 + 43  # 32 bytes of URL-safe base64, unpadded
    assert first != second


def test_validate_token_returns_the_client_id(auth: AuthManager) -> None:
    token = auth.generate_token("ci-runner", now=T0)
    assert auth.validate_token(token, now=T0 + timedelta(minutes=1)) == "ci-runner"


def test_validate_refuses_unknown_and_malformed_tokens(auth: AuthManager) -> None:
    auth.generate_token("ci", now=T0)
    for bad in ["ffr_" + "A" * 43, "not-a-token", "", "ffr_" + "x" * 500]:
        with pytest.raises(InvalidToken):
            auth.validate_token(bad, now=T0)


def test_token_expires_at_the_configured_minute(store: Store) -> None:
    auth = AuthManager(store, AuthConfig(token_expiry_minutes=30))
    with freeze_time(T0) as clock:
        token = auth.generate_token("ci")
        clock.tick(timedelta(minutes=30) - timedelta(microseconds=1))
        assert auth.validate_token(token) == "ci"  # just before
        clock.tick(timedelta(microseconds=1))
        with pytest.raises(TokenExpired):  # at expires_at and after
            auth.validate_token(token)


def test_revoked_token_is_refused(auth: AuthManager) -> None:
    issued = auth.issue_token("ci", Role.OPERATOR, now=T0)
    assert auth.revoke(issued.id, now=T0) is True
    with pytest.raises(TokenRevoked):
        auth.validate_token(issued.token, now=T0)
    assert isinstance(TokenRevoked("x"), InvalidToken)  # one `except` answers 401


def test_cleanup_deletes_expired_tokens_and_logs_the_count(
    auth: AuthManager, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    for minutes in (1, 2, 5):
        auth.issue_token("old", Role.VIEWER, expires_minutes=minutes, now=T0)
    keeper = auth.issue_token("new", Role.VIEWER, expires_minutes=60, now=T0)
    caplog.set_level(logging.INFO, logger="controller.auth")

    assert auth.cleanup_expired(now=T0 + timedelta(minutes=5)) == 3

    assert "[Auth] Cleaned up 3 expired tokens" in caplog.messages
    assert [row.id for row in _rows(store)] == [keeper.id]
    assert auth.cleanup_expired(now=T0 + timedelta(minutes=5)) == 0


def test_only_the_sha256_of_the_token_is_stored(auth: AuthManager, store: Store) -> None:
    issued = auth.issue_token("ci", Role.ADMIN, now=T0)
    (row,) = _rows(store)
    assert row.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    assert issued.token not in {str(v) for v in row.model_dump().values()}
    assert issued.token[4:] not in row.token_hash


def test_constant_time_compare_is_used(
    auth: AuthManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = auth.generate_token("ci", now=T0)
    calls: list[tuple[str, str]] = []
    real: Callable[[str, str], bool] = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert auth.validate_token(token, now=T0) == "ci"
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert calls == [(digest, digest)]


def test_the_101st_request_in_a_minute_is_refused(auth: AuthManager) -> None:
    for _ in range(100):
        auth.check_rate_limit("ci", now=T0)
    with pytest.raises(RateLimitExceeded) as refused:
        auth.check_rate_limit("ci", now=T0 + timedelta(seconds=0.5))
    # 1 token takes 0.6 s at 100/min; 0.5 s are gone, 0.1 s left: Retry-After rounds up.
    assert refused.value.retry_after_seconds == 1


def test_bucket_refills_at_rate_over_frozen_time(auth: AuthManager) -> None:
    with freeze_time(T0) as clock:
        for _ in range(100):
            auth.check_rate_limit("ci")
        with pytest.raises(RateLimitExceeded):
            auth.check_rate_limit("ci")
        clock.tick(6)  # 6 s at 100/60 per second: exactly 10 tokens
        for _ in range(10):
            auth.check_rate_limit("ci")
        with pytest.raises(RateLimitExceeded):
            auth.check_rate_limit("ci")


def test_clients_have_separate_buckets(auth: AuthManager) -> None:
    for _ in range(100):
        auth.check_rate_limit("noisy", now=T0)
    with pytest.raises(RateLimitExceeded):
        auth.check_rate_limit("noisy", now=T0)
    auth.check_rate_limit("quiet", now=T0)  # unaffected


def test_failed_authentications_block_the_address_until_the_minute_is_over(
    auth: AuthManager, metrics: Metrics
) -> None:
    good = auth.generate_token("ci", now=T0)
    for i in range(21):  # more than failedAuthPerMinute (20)
        with pytest.raises(InvalidToken):
            auth.authenticate("ffr_guess", remote_address="10.0.0.9", now=T0 + timedelta(seconds=i))
    # Refused before the token is looked at, even a good one.
    with pytest.raises(TooManyFailedAuthentications) as refused:
        auth.authenticate(good, remote_address="10.0.0.9", now=T0 + timedelta(seconds=30))
    assert refused.value.retry_after_seconds == 30
    assert isinstance(refused.value, RateLimitExceeded)  # also a 429
    # Other addresses are not affected.
    assert auth.authenticate(good, remote_address="10.0.0.10", now=T0 + timedelta(seconds=30))
    # The window started at the first failure (T0): at T0 + 60 s the address is free.
    principal = auth.authenticate(good, remote_address="10.0.0.9", now=T0 + timedelta(seconds=60))
    assert principal.client_id == "ci"
    assert _sample(metrics, "ffrtmp_master_invalid_tokens_total") == 21
    assert _sample(metrics, "ffrtmp_master_rate_limit_exceeded_total") == 1


def test_twenty_failures_are_still_allowed(auth: AuthManager) -> None:
    good = auth.generate_token("ci", now=T0)
    for _ in range(20):
        with pytest.raises(InvalidToken):
            auth.authenticate("nope", remote_address="10.0.0.9", now=T0)
    assert auth.authenticate(good, remote_address="10.0.0.9", now=T0).client_id == "ci"


# -- roles, principals, per-token expiry ----------------------------------------------


def test_authenticate_returns_the_principal(auth: AuthManager) -> None:
    issued = auth.issue_token("worker-01", Role.WORKER, node="worker-01", now=T0)
    assert auth.authenticate(issued.token, now=T0) == Principal(
        client_id="worker-01", role=Role.WORKER, node="worker-01", token_id=issued.id
    )


def test_generate_token_defaults_to_admin(auth: AuthManager) -> None:
    token = auth.generate_token("bootstrap", now=T0)
    assert auth.authenticate(token, now=T0).role is Role.ADMIN


@pytest.mark.parametrize(
    ("role", "node", "message"),
    [
        (Role.WORKER, None, "needs the node"),
        ("worker", "", "needs the node"),
        (Role.ADMIN, "worker-01", "only worker tokens"),
        (Role.VIEWER, "worker-01", "only worker tokens"),
        ("root", None, "unknown role"),
    ],
)
def test_node_binding_and_role_are_checked(
    auth: AuthManager, store: Store, role: str, node: str | None, message: str
) -> None:
    with pytest.raises(InvalidTokenRequest, match=message):
        auth.issue_token("c", role, node=node, now=T0)
    assert _rows(store) == []


@pytest.mark.parametrize("minutes", [0, -1, float("nan"), float("inf"), 10**9, True, "5"])
def test_bad_lifetimes_are_refused(auth: AuthManager, minutes: object) -> None:
    with pytest.raises(InvalidTokenRequest, match="expiresMinutes"):
        auth.issue_token("c", Role.VIEWER, expires_minutes=minutes, now=T0)  # type: ignore[arg-type]


def test_per_token_expiry_takes_fractional_minutes(auth: AuthManager) -> None:
    issued = auth.issue_token("short", Role.VIEWER, expires_minutes=0.5, now=T0)
    assert issued.expires_at == T0 + timedelta(seconds=30)
    assert auth.validate_token(issued.token, now=T0 + timedelta(seconds=29.999)) == "short"
    with pytest.raises(TokenExpired):
        auth.validate_token(issued.token, now=T0 + timedelta(seconds=30))


def test_issued_token_answer_shape_and_repr(auth: AuthManager) -> None:
    issued = auth.issue_token("w", "worker", node="worker-01", expires_minutes=1.5, now=T0)
    assert issued.to_dict() == {
        "id": issued.id,
        "token": issued.token,
        "clientId": "w",
        "role": "worker",
        "node": "worker-01",
        "expiresAt": "2026-01-01T10:01:30Z",
    }
    assert issued.id.startswith("tok_") and len(issued.id) == 16
    assert issued.token not in repr(issued)


# -- lifecycle, audit, metrics ---------------------------------------------------------


def test_create_and_revoke_are_audited_without_secrets(auth: AuthManager, store: Store) -> None:
    issued = auth.issue_token("ci", Role.OPERATOR, actor="admin-1", now=T0)
    auth.revoke(issued.id, actor="admin-1", now=T0 + timedelta(minutes=1))
    auth.revoke(issued.id, actor="admin-1", now=T0 + timedelta(minutes=2))  # no second row

    created, revoked = _audit(store)
    assert (created.event_type, created.entity_type, created.entity_id, created.client_id) == (
        "token.created", "token", issued.id, "admin-1",
    )
    assert created.details == {
        "clientId": "ci", "role": "operator", "node": None, "expiresAt": "2026-01-01T11:00:00Z",
    }
    assert (revoked.event_type, revoked.entity_id) == ("token.revoked", issued.id)
    assert revoked.created_at == T0 + timedelta(minutes=1)
    digest = hashlib.sha256(issued.token.encode()).hexdigest()
    for row in (created, revoked):
        assert issued.token not in str(row.details) and digest not in str(row.details)


def test_revoke_unknown_token_returns_false(auth: AuthManager, store: Store) -> None:
    assert auth.revoke("tok_000000000000", now=T0) is False
    assert _audit(store) == []


def test_list_tokens_shows_state_but_no_hash(auth: AuthManager) -> None:
    a = auth.issue_token("a", Role.VIEWER, now=T0)
    b = auth.issue_token("b", Role.WORKER, node="worker-02", now=T0 + timedelta(seconds=1))
    auth.revoke(a.id, now=T0 + timedelta(seconds=2))

    listed = auth.list_tokens()
    assert [t.id for t in listed] == [a.id, b.id]
    assert not any(hasattr(t, "token_hash") for t in listed)
    assert listed[0].revoked_at == T0 + timedelta(seconds=2)
    assert listed[1].node == "worker-02"
    assert [t.is_active(T0 + timedelta(seconds=3)) for t in listed] == [False, True]
    assert [t.id for t in auth.list_tokens(client_id="b")] == [b.id]


def test_last_used_is_written_at_most_once_a_minute(auth: AuthManager) -> None:
    token = auth.generate_token("ci", now=T0)
    auth.validate_token(token, now=T0 + timedelta(seconds=10))
    auth.validate_token(token, now=T0 + timedelta(seconds=50))
    (info,) = auth.list_tokens()
    assert info.last_used_at == T0 + timedelta(seconds=10)
    auth.validate_token(token, now=T0 + timedelta(seconds=70))
    (info,) = auth.list_tokens()
    assert info.last_used_at == T0 + timedelta(seconds=70)


def test_token_gauge_and_refusal_counters(auth: AuthManager, metrics: Metrics) -> None:
    a = auth.issue_token("a", Role.VIEWER, expires_minutes=1, now=T0)
    auth.issue_token("b", Role.VIEWER, now=T0)
    assert _sample(metrics, "ffrtmp_master_auth_tokens_total") == 2
    auth.revoke(a.id, now=T0)
    assert _sample(metrics, "ffrtmp_master_auth_tokens_total") == 1
    auth.cleanup_expired(now=T0 + timedelta(hours=2))
    assert _sample(metrics, "ffrtmp_master_auth_tokens_total") == 0

    with pytest.raises(InvalidToken):
        auth.validate_token(a.token, now=T0)
    for _ in range(101):
        with contextlib.suppress(RateLimitExceeded):
            auth.check_rate_limit("x", now=T0)
    assert _sample(metrics, "ffrtmp_master_invalid_tokens_total") == 1
    assert _sample(metrics, "ffrtmp_master_rate_limit_exceeded_total") == 1


def test_naive_now_is_refused(auth: AuthManager) -> None:
    with pytest.raises(ValueError, match="naive"):
        auth.generate_token("ci", now=datetime(2026, 1, 1, 10, 0))


# -- the lookup cache ----------------------------------------------------------------


def _count_reads(auth: AuthManager, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads = [0]
    read = auth.db.read

    def counted() -> contextlib.AbstractContextManager[object]:
        reads[0] += 1
        return read()

    monkeypatch.setattr(auth.db, "read", counted)
    return reads


def test_a_cached_token_is_not_looked_up_again_within_the_ttl(
    auth: AuthManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    with freeze_time(T0) as clock:
        token = auth.generate_token("ci")
        reads = _count_reads(auth, monkeypatch)
        assert auth.validate_token(token) == "ci"
        assert reads == [1]
        clock.tick(TOKEN_CACHE_TTL - timedelta(microseconds=1))
        assert auth.validate_token(token) == "ci"
        assert reads == [1]
        clock.tick(timedelta(microseconds=1))  # the entry is as old as the TTL: look again
        assert auth.validate_token(token) == "ci"
        assert reads == [2]


def test_a_revocation_elsewhere_takes_effect_within_the_ttl(
    auth: AuthManager, store: Store
) -> None:
    other = AuthManager(store, AuthConfig())  # `ffrtmp token revoke`, or another replica
    with freeze_time(T0) as clock:
        issued = auth.issue_token("ci", Role.OPERATOR)
        assert auth.validate_token(issued.token) == "ci"
        assert other.revoke(issued.id) is True
        clock.tick(TOKEN_CACHE_TTL - timedelta(seconds=1))
        assert auth.validate_token(issued.token) == "ci"  # still the cached lookup
        clock.tick(timedelta(seconds=1))
        with pytest.raises(TokenRevoked):
            auth.validate_token(issued.token)


def test_a_revocation_in_this_process_refuses_the_cached_token_at_once(
    auth: AuthManager,
) -> None:
    with freeze_time(T0):
        issued = auth.issue_token("ci", Role.OPERATOR)
        assert auth.validate_token(issued.token) == "ci"
        assert auth.revoke(issued.id) is True
        with pytest.raises(TokenRevoked):
            auth.validate_token(issued.token)


def test_an_expired_token_is_refused_even_when_cached(store: Store) -> None:
    auth = AuthManager(store, AuthConfig(token_expiry_minutes=1))
    with freeze_time(T0) as clock:
        token = auth.generate_token("ci")
        clock.tick(timedelta(minutes=1) - timedelta(seconds=1))
        assert auth.validate_token(token) == "ci"  # cached now, one second to live
        clock.tick(timedelta(seconds=1))
        with pytest.raises(TokenExpired):
            auth.validate_token(token)


def test_cached_lookups_still_touch_last_used_once_a_minute(auth: AuthManager) -> None:
    token = auth.generate_token("ci", now=T0)
    for seconds in (10, 11, 12, 70, 71):
        auth.validate_token(token, now=T0 + timedelta(seconds=seconds))
    (info,) = auth.list_tokens()
    assert info.last_used_at == T0 + timedelta(seconds=70)


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = TokenCache(size=2)
    tokens = [
        StoredToken(f"tok_{i}", "ci", "admin", None, T0 + timedelta(days=1), T0, None, None, f"h{i}")
        for i in range(3)
    ]
    cache.put("h0", tokens[0], T0)
    cache.put("h1", tokens[1], T0)
    assert cache.get("h0", T0) == tokens[0]  # h1 is now the least recently used
    cache.put("h2", tokens[2], T0)
    assert len(cache) == 2
    assert cache.get("h1", T0) is None
    assert cache.get("h0", T0) == tokens[0]


def test_the_in_memory_check_answers_only_what_the_cache_can_prove(
    auth: AuthManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = auth.issue_token("w1", Role.WORKER, node="n1", now=T0)
    reads = _count_reads(auth, monkeypatch)
    # Never looked up: only the full check (a database read) can answer.
    assert auth.authenticate_cached(issued.token, now=T0) is None
    assert auth.authenticate(issued.token, now=T0).client_id == "w1"
    assert reads == [1]
    principal = auth.authenticate_cached(issued.token, remote_address="10.0.0.1",
                                         now=T0 + timedelta(seconds=2))
    assert principal == Principal("w1", Role.WORKER, "n1", issued.id)
    assert reads == [1]
    # Garbage, an expired cache entry, or a `last_used_at` write due: not answered here.
    assert auth.authenticate_cached("ffr_nonsense", now=T0) is None
    assert auth.authenticate_cached(issued.token, now=T0 + TOKEN_CACHE_TTL) is None
    assert auth.authenticate(issued.token, now=T0 + timedelta(seconds=61)).client_id == "w1"
    assert auth.authenticate_cached(issued.token, now=T0 + timedelta(seconds=62)) is not None


def test_the_in_memory_check_never_answers_for_a_token_revoked_here(auth: AuthManager) -> None:
    issued = auth.issue_token("ci", Role.OPERATOR, now=T0)
    auth.authenticate(issued.token, now=T0)
    assert auth.revoke(issued.id, now=T0) is True
    assert auth.authenticate_cached(issued.token, now=T0 + timedelta(seconds=1)) is None
    with pytest.raises(TokenRevoked):
        auth.authenticate(issued.token, now=T0 + timedelta(seconds=1))


def test_the_in_memory_check_still_refuses_a_blocked_address(auth: AuthManager) -> None:
    issued = auth.issue_token("ci", Role.OPERATOR, now=T0)
    auth.authenticate(issued.token, now=T0)
    for _ in range(auth.config.failed_auth_per_minute + 1):
        with contextlib.suppress(InvalidToken, TooManyFailedAuthentications):
            auth.authenticate("ffr_bad", remote_address="10.0.0.9", now=T0)
    with pytest.raises(TooManyFailedAuthentications):
        auth.authenticate_cached(issued.token, remote_address="10.0.0.9", now=T0 + timedelta(seconds=1))


def test_last_used_goes_through_the_writer_when_there_is_one(auth: AuthManager, store: Store) -> None:
    from controller.store.group import GroupCommit

    writer = GroupCommit(store)
    auth.writer = writer
    token = auth.generate_token("ci", now=T0)
    assert auth.validate_token(token, now=T0 + timedelta(seconds=1)) == "ci"
    writer.close()  # the queued write is done once the writer has finished its queue
    (info,) = auth.list_tokens()
    assert info.last_used_at == T0 + timedelta(seconds=1)
    # A closed writer refuses work: the write is then made at once, in its own transaction.
    assert auth.validate_token(token, now=T0 + timedelta(seconds=90)) == "ci"
    (info,) = auth.list_tokens()
    assert info.last_used_at == T0 + timedelta(seconds=90)


# -- the cache's refresher -----------------------------------------------------------


def test_the_refresher_keeps_tokens_in_use_cached_past_the_ttl(
    auth: AuthManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = auth.issue_token("w1", Role.WORKER, node="n1", now=T0)
    reads = _count_reads(auth, monkeypatch)
    auth.authenticate(issued.token, now=T0)
    assert auth.authenticate_cached(issued.token, now=T0 + timedelta(seconds=10)) is not None
    assert auth.refresh_cache(now=T0 + timedelta(seconds=14)) == 0  # not half the TTL old yet
    assert auth.refresh_cache(now=T0 + timedelta(seconds=16)) == 1  # one bulk read
    assert reads == [2]
    # Past the first lookup's TTL, the entry read at 16 s answers without the database.
    assert auth.authenticate_cached(issued.token, now=T0 + timedelta(seconds=40)) is not None
    assert auth.authenticate(issued.token, now=T0 + timedelta(seconds=45)).client_id == "w1"
    assert reads == [2]


def test_the_refresher_leaves_tokens_not_used_since_their_lookup_to_expire(
    auth: AuthManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = auth.issue_token("ci", Role.OPERATOR, now=T0)
    auth.authenticate(issued.token, now=T0)
    reads = _count_reads(auth, monkeypatch)
    assert auth.refresh_cache(now=T0 + timedelta(seconds=20)) == 0
    assert reads == [0]
    assert auth.authenticate_cached(issued.token, now=T0 + TOKEN_CACHE_TTL) is None


def test_the_refresher_drops_a_token_revoked_elsewhere_before_the_ttl(
    auth: AuthManager, store: Store
) -> None:
    other = AuthManager(store, AuthConfig())  # `ffrtmp token revoke`, or another replica
    issued = auth.issue_token("ci", Role.OPERATOR, now=T0)
    auth.authenticate(issued.token, now=T0)
    auth.authenticate(issued.token, now=T0 + timedelta(seconds=5))
    assert other.revoke(issued.id, now=T0 + timedelta(seconds=6)) is True
    assert auth.authenticate_cached(issued.token, now=T0 + timedelta(seconds=7)) is not None  # cached
    assert auth.refresh_cache(now=T0 + timedelta(seconds=16)) == 1
    assert auth.authenticate_cached(issued.token, now=T0 + timedelta(seconds=17)) is None
    with pytest.raises(TokenRevoked):
        auth.authenticate(issued.token, now=T0 + timedelta(seconds=17))


def test_the_refresher_drops_expired_and_deleted_tokens(store: Store) -> None:
    auth = AuthManager(store, AuthConfig(token_expiry_minutes=1))
    expiring = auth.issue_token("a", Role.OPERATOR, now=T0)
    deleted = auth.issue_token("b", Role.OPERATOR, now=T0 + timedelta(seconds=30))
    for issued in (expiring, deleted):
        auth.authenticate(issued.token, now=T0 + timedelta(seconds=30))
        auth.authenticate(issued.token, now=T0 + timedelta(seconds=35))
    with store.write() as session:
        session.execute(sa.delete(AuthToken).where(AuthToken.id == deleted.id))  # type: ignore[arg-type]
    assert auth.refresh_cache(now=T0 + timedelta(seconds=60)) == 2
    assert len(auth.token_cache) == 0


def test_a_bulk_read_does_not_bring_back_an_entry_dropped_meanwhile() -> None:
    cache = TokenCache()
    token = StoredToken("tok_1", "ci", "admin", None, T0 + timedelta(days=1), T0, None, None, "h1")
    cache.put("h1", token, T0)
    assert cache.get("h1", T0 + timedelta(seconds=1)) == token
    due = cache.due(T0 + timedelta(seconds=20), TOKEN_CACHE_TTL / 2)
    assert due == ["h1"]
    cache.forget("tok_1")  # revoked here while the bulk read ran
    cache.refreshed(due, {"h1": token}, T0 + timedelta(seconds=20))
    assert cache.get("h1", T0 + timedelta(seconds=21)) is None


def test_the_in_memory_check_queues_the_last_used_write_with_the_writer(store: Store) -> None:
    auth = AuthManager(store, AuthConfig())
    auth.writer = GroupCommit(store)
    try:
        issued = auth.issue_token("w1", Role.WORKER, node="n1", now=T0)
        auth.authenticate(issued.token, now=T0)  # looked up and touched (through the writer)
        flushed = auth.writer.submit(lambda session: None)  # one writer: after the touch
        assert flushed is not None
        flushed.result(5)
        auth.authenticate(issued.token, now=T0 + timedelta(seconds=40))  # looked up again
        at = T0 + timedelta(seconds=61)
        # Due for its write again: answered in memory all the same, the write queued.
        assert auth.authenticate_cached(issued.token, now=at) == Principal("w1", Role.WORKER, "n1", issued.id)
    finally:
        auth.writer.close()
    (info,) = auth.list_tokens()
    assert info.last_used_at == at


def test_the_refresher_thread_runs_until_stopped(
    auth: AuthManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = threading.Event()
    monkeypatch.setattr(auth, "refresh_cache", lambda: ran.set() or 0)
    auth.start(interval=0.01)
    try:
        assert ran.wait(5)
    finally:
        auth.stop()
    assert auth._refresher is None
