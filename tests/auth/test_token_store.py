"""The token queries of the store layer, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from controller.store import tokens as q
from controller.store.engine import Store

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def _insert(store: Store, token_id: str, expires_at: datetime, client_id: str = "c") -> None:
    with store.write() as session:
        q.insert_token(
            session,
            token_id=token_id,
            client_id=client_id,
            token_hash=token_id.ljust(64, "0"),
            role="viewer",
            node=None,
            expires_at=expires_at,
            created_at=T0,
        )


def test_find_by_hash_returns_the_row_with_aware_times(store: Store) -> None:
    _insert(store, "tok_a", T0 + timedelta(hours=1))
    with store.read() as session:
        found = q.find_token_by_hash(session, "tok_a".ljust(64, "0"))
        missing = q.find_token_by_hash(session, "f" * 64)
    assert found is not None and missing is None
    assert (found.id, found.client_id, found.role, found.node) == ("tok_a", "c", "viewer", None)
    assert found.expires_at == T0 + timedelta(hours=1)
    assert found.expires_at.tzinfo is not None
    assert found.token_hash == "tok_a".ljust(64, "0")


def test_token_hash_is_unique(store: Store) -> None:
    _insert(store, "tok_a", T0)
    with pytest.raises(sa.exc.IntegrityError), store.write() as session:
        q.insert_token(
            session, token_id="tok_b", client_id="c", token_hash="tok_a".ljust(64, "0"),
            role="viewer", node=None, expires_at=T0, created_at=T0,
        )


def test_revoke_sets_the_time_once_and_reports_existence(store: Store) -> None:
    _insert(store, "tok_a", T0 + timedelta(hours=1))
    with store.write() as session:
        assert q.revoke_token(session, "tok_a", T0 + timedelta(minutes=1)) is True
        assert q.revoke_token(session, "tok_a", T0 + timedelta(minutes=2)) is True
        assert q.revoke_token(session, "tok_nope", T0) is False
    with store.read() as session:
        info = q.get_token(session, "tok_a")
    assert info is not None and info.revoked_at == T0 + timedelta(minutes=1)


def test_touch_writes_at_most_once_per_resolution(store: Store) -> None:
    _insert(store, "tok_a", T0 + timedelta(hours=1))
    with store.write() as session:
        assert q.touch_token(session, "tok_a", T0) is True
        assert q.touch_token(session, "tok_a", T0 + timedelta(seconds=59)) is False
        assert q.touch_token(session, "tok_a", T0 + timedelta(seconds=60)) is True
    with store.read() as session:
        (info,) = q.list_tokens(session)
    assert info.last_used_at == T0 + timedelta(seconds=60)


def test_delete_expired_counts_and_keeps_the_living(store: Store) -> None:
    _insert(store, "tok_a", T0 - timedelta(seconds=1))
    _insert(store, "tok_b", T0)  # expires exactly now: expired
    _insert(store, "tok_c", T0 + timedelta(microseconds=1))
    with store.write() as session:
        assert q.delete_expired_tokens(session, T0) == 2
    with store.read() as session:
        assert [t.id for t in q.list_tokens(session)] == ["tok_c"]


def test_count_active_excludes_revoked_and_expired(store: Store) -> None:
    _insert(store, "tok_a", T0 + timedelta(hours=1))
    _insert(store, "tok_b", T0 + timedelta(hours=1))
    _insert(store, "tok_c", T0)
    with store.write() as session:
        q.revoke_token(session, "tok_b", T0)
    with store.read() as session:
        assert q.count_active_tokens(session, T0) == 1


def test_list_filters_by_client_and_never_has_hashes(store: Store) -> None:
    _insert(store, "tok_a", T0, client_id="x")
    _insert(store, "tok_b", T0, client_id="y")
    with store.read() as session:
        listed = q.list_tokens(session, client_id="y")
    assert [t.id for t in listed] == ["tok_b"]
    assert type(listed[0]) is q.TokenInfo
