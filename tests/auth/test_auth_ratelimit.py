"""The in-memory limiters: exact refill, Retry-After, bounded memory, thread safety."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from controller.auth import (
    FailedAuthLimiter,
    RateLimitExceeded,
    TokenBucketLimiter,
    TooManyFailedAuthentications,
)

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def _drain(limiter: TokenBucketLimiter, key: str, now: datetime) -> int:
    taken = 0
    while True:
        try:
            limiter.acquire(key, now)
        except RateLimitExceeded:
            return taken
        taken += 1


def test_capacity_then_refusal_with_retry_after_rounded_up() -> None:
    limiter = TokenBucketLimiter(capacity=100)
    assert _drain(limiter, "c", T0) == 100
    with pytest.raises(RateLimitExceeded) as refused:
        limiter.acquire("c", T0)
    assert refused.value.retry_after_seconds == 1  # 0.6 s -> 1


def test_slow_bucket_retry_after_is_whole_seconds() -> None:
    limiter = TokenBucketLimiter(capacity=1)  # one request a minute
    limiter.acquire("c", T0)
    with pytest.raises(RateLimitExceeded) as refused:
        limiter.acquire("c", T0 + timedelta(seconds=10.2))
    assert refused.value.retry_after_seconds == 50  # 49.8 s -> 50
    limiter.acquire("c", T0 + timedelta(seconds=60))


def test_refill_is_exact_at_token_boundaries() -> None:
    limiter = TokenBucketLimiter(capacity=100)
    _drain(limiter, "c", T0)
    just_before = T0 + timedelta(seconds=0.6) - timedelta(microseconds=1)
    with pytest.raises(RateLimitExceeded):
        limiter.acquire("c", just_before)
    limiter.acquire("c", T0 + timedelta(seconds=0.6))  # exactly one token
    assert limiter.tokens("c", T0 + timedelta(seconds=0.6)) == 0


def test_refill_never_exceeds_capacity() -> None:
    limiter = TokenBucketLimiter(capacity=5)
    limiter.acquire("c", T0)
    assert limiter.tokens("c", T0 + timedelta(hours=1)) == 5
    assert _drain(limiter, "c", T0 + timedelta(hours=1)) == 5


def test_refused_request_takes_nothing() -> None:
    limiter = TokenBucketLimiter(capacity=60)  # one token per second
    _drain(limiter, "c", T0)
    for _ in range(10):
        with pytest.raises(RateLimitExceeded):
            limiter.acquire("c", T0 + timedelta(seconds=0.5))
    limiter.acquire("c", T0 + timedelta(seconds=1))


def test_idle_buckets_are_evicted_and_memory_is_bounded() -> None:
    limiter = TokenBucketLimiter(capacity=10, max_entries=3)
    for i in range(5):
        limiter.acquire(f"c{i}", T0)
    assert len(limiter) == 3  # least recently used forgotten
    limiter.acquire("late", T0 + timedelta(seconds=60))
    assert len(limiter) == 1  # the others were idle for a minute: full, dropped


def test_concurrent_requests_never_overspend() -> None:
    limiter = TokenBucketLimiter(capacity=100)
    granted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        n = _drain(limiter, "shared", T0)
        with lock:
            granted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100


def test_failed_auth_fixed_window_from_first_failure() -> None:
    limiter = FailedAuthLimiter(limit=3)
    for s in (0, 10, 20):
        limiter.record_failure("a", T0 + timedelta(seconds=s))
    limiter.check("a", T0 + timedelta(seconds=20))  # 3 failures: not more than 3
    assert limiter.record_failure("a", T0 + timedelta(seconds=25)) == 4
    with pytest.raises(TooManyFailedAuthentications) as refused:
        limiter.check("a", T0 + timedelta(seconds=25.5))
    assert refused.value.retry_after_seconds == 35  # 34.5 s -> 35
    limiter.check("b", T0 + timedelta(seconds=25))
    limiter.check("a", T0 + timedelta(seconds=60))  # the minute is over
    assert limiter.record_failure("a", T0 + timedelta(seconds=61)) == 1  # new window


def test_failed_auth_memory_is_bounded() -> None:
    limiter = FailedAuthLimiter(limit=1, max_entries=2)
    for i in range(4):
        limiter.record_failure(f"10.0.0.{i}", T0)
    assert len(limiter) == 2
    limiter.record_failure("10.0.0.99", T0 + timedelta(seconds=60))
    assert len(limiter) == 1  # ended windows dropped


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(capacity=0)
    with pytest.raises(ValueError):
        FailedAuthLimiter(limit=0)
