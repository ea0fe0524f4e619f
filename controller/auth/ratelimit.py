"""In-memory rate limiters: a token bucket per client, a failed-authentication window per address.

Both are thread-safe (the API runs handlers in a thread pool) and take `now`, so
tests drive them with a frozen clock. Both are bounded: state that no longer
matters is dropped as soon as it is found idle, and past `max_entries` the least
recently used entry is forgotten.

The bucket is kept in exact integer units (micro-token-seconds) rather than
floats, so "refill 100/60 tokens per second" lands on whole tokens exactly when it
should: after 0.6 s a capacity-100 bucket has exactly one more token, not
0.9999999.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from controller.auth.errors import RateLimitExceeded, TooManyFailedAuthentications

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROS_PER_SECOND = 1_000_000
_MICROS_PER_MINUTE = 60 * _MICROS_PER_SECOND

DEFAULT_MAX_ENTRIES = 10_000
"""Clients (or addresses) tracked at most; each entry is a few dozen bytes."""


def _micros(now: datetime) -> int:
    """`now` as integer microseconds since the epoch (exact, unlike `timestamp()`)."""
    return (now - _EPOCH) // timedelta(microseconds=1)


@dataclass(slots=True)
class _Bucket:
    level: int
    """Tokens held, in units of 1/60_000_000 of a request per unit of capacity (see below)."""
    updated: int
    """Microseconds since the epoch of the last refill."""


class TokenBucketLimiter:
    """A token bucket per key: `capacity` requests at once, refilled at `capacity / 60` per second.

    Units: one request costs `60_000_000` units and the bucket gains `capacity`
    units per microsecond, so a full bucket is `capacity * 60_000_000` units and an
    empty one is full again after exactly 60 s. Everything stays an integer.

    A bucket idle for 60 s or more is full, which is what a new bucket is, so it
    can be dropped without changing any answer; memory is therefore bounded by the
    clients active in the last minute, and by `max_entries` in any case (beyond it
    the least recently used client is forgotten, i.e. gets a full bucket back).
    """

    def __init__(self, capacity: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.max_entries = max_entries
        self._cost = _MICROS_PER_MINUTE
        self._full = capacity * _MICROS_PER_MINUTE
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str, now: datetime) -> None:
        """Take one request from `key`'s bucket or raise `RateLimitExceeded` (nothing taken)."""
        t = _micros(now)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(level=self._full, updated=t)
                self._buckets[key] = bucket
            else:
                self._buckets.move_to_end(key)
                # A clock that steps back refills nothing and debits nothing twice.
                elapsed = max(0, t - bucket.updated)
                bucket.level = min(self._full, bucket.level + elapsed * self.capacity)
                bucket.updated = max(bucket.updated, t)
            if bucket.level >= self._cost:
                bucket.level -= self._cost
                self._evict(t)
                return
            missing_micros = math.ceil((self._cost - bucket.level) / self.capacity)
            retry_after = math.ceil(missing_micros / _MICROS_PER_SECOND)
        raise RateLimitExceeded(
            f"rate limit of {self.capacity} requests per minute exceeded for client {key!r}",
            retry_after_seconds=retry_after,
        )

    def tokens(self, key: str, now: datetime) -> float:
        """Requests `key` could make right now (fractional); for tests and diagnostics."""
        t = _micros(now)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return float(self.capacity)
            level = min(self._full, bucket.level + max(0, t - bucket.updated) * self.capacity)
        return level / self._cost

    def __len__(self) -> int:
        return len(self._buckets)

    def _evict(self, t: int) -> None:
        """Drop buckets idle long enough to be full again, then the oldest past `max_entries`."""
        # The dict is in least-recently-used order, so idle buckets sit at the front.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            idle_full = t - bucket.updated >= _MICROS_PER_MINUTE
            if not idle_full and len(self._buckets) <= self.max_entries:
                break
            del self._buckets[key]


@dataclass(slots=True)
class _Window:
    started: int
    """Microseconds since the epoch of the first failure of this window."""
    failures: int


class FailedAuthLimiter:
    """Counts failed authentications per remote address in fixed one-minute windows.

    The window starts at an address's first failure and lasts 60 s. When the
    address has had more than `limit` failures in its window, it is refused until
    that window ends; the next failure after that opens a new window. A fixed window
    (rather than a sliding one) makes the promised "until the minute is over" exact
    and keeps one small record per address.

    Memory: windows that have ended are dropped when found; at most `max_entries`
    addresses are tracked, beyond which the oldest window is forgotten (an attacker
    spraying from that many addresses is a job for the network edge, not this).
    """

    def __init__(
        self, limit: int, window_seconds: float = 60.0, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.max_entries = max_entries
        self._window = round(window_seconds * _MICROS_PER_SECOND)
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str, now: datetime) -> None:
        """Raise `TooManyFailedAuthentications` while `address` is refused."""
        t = _micros(now)
        with self._lock:
            window = self._windows.get(address)
            if window is None or t - window.started >= self._window:
                return
            if window.failures <= self.limit:
                return
            remaining = window.started + self._window - t
        raise TooManyFailedAuthentications(
            f"too many failed authentications from {address}",
            retry_after_seconds=math.ceil(remaining / _MICROS_PER_SECOND),
        )

    def record_failure(self, address: str, now: datetime) -> int:
        """Count one failed authentication from `address`; returns the failures in its window."""
        t = _micros(now)
        with self._lock:
            window = self._windows.get(address)
            if window is None or t - window.started >= self._window:
                # A new window goes to the end, so the dict stays ordered by start time.
                self._windows.pop(address, None)
                window = _Window(started=t, failures=0)
                self._windows[address] = window
            window.failures += 1
            self._evict(t)
            return window.failures

    def __len__(self) -> int:
        return len(self._windows)

    def _evict(self, t: int) -> None:
        """Drop ended windows (oldest first), then the oldest past `max_entries`."""
        while self._windows:
            address, window = next(iter(self._windows.items()))
            ended = t - window.started >= self._window
            if not ended and len(self._windows) <= self.max_entries:
                break
            del self._windows[address]
