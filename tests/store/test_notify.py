"""Wake-ups between replicas over PostgreSQL LISTEN/NOTIFY, against the real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from controller.store.notify import ChangeFeed

pytestmark = pytest.mark.postgres


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Seen:
    def __init__(self) -> None:
        self.changed = 0
        self.bound: list[str] = []
        self.lock = threading.Lock()

    def on_changed(self) -> None:
        with self.lock:
            self.changed += 1

    def on_bound(self, nodes: object) -> None:
        with self.lock:
            self.bound.extend(nodes)  # type: ignore[call-overload]


def test_a_change_on_one_replica_wakes_the_other_not_itself(empty_pg_url: str) -> None:
    seen_a, seen_b = Seen(), Seen()
    a = ChangeFeed(empty_pg_url, "replica-a", seen_a.on_changed, seen_a.on_bound)
    b = ChangeFeed(empty_pg_url, "replica-b", seen_b.on_changed, seen_b.on_bound)
    a.start()
    b.start()
    try:
        time.sleep(0.3)  # both listening
        a.changed()
        assert wait_for(lambda: seen_b.changed >= 1)
        a.bound(["n1", "n2"])
        assert wait_for(lambda: sorted(seen_b.bound) == ["n1", "n2"])
        time.sleep(0.2)
        assert seen_a.changed == 0 and seen_a.bound == []  # its own events are not delivered back
    finally:
        a.stop()
        b.stop()


def test_a_burst_of_changes_is_coalesced(empty_pg_url: str) -> None:
    seen = Seen()
    a = ChangeFeed(empty_pg_url, "replica-a", lambda: None, lambda nodes: None)
    b = ChangeFeed(empty_pg_url, "replica-b", seen.on_changed, seen.on_bound)
    a.start()
    b.start()
    try:
        time.sleep(0.3)
        for _ in range(500):
            a.changed()
        assert wait_for(lambda: seen.changed >= 1)
        time.sleep(0.3)
        assert 1 <= seen.changed < 100
    finally:
        a.stop()
        b.stop()


def test_an_unreachable_server_costs_warnings_not_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    feed = ChangeFeed("postgresql+psycopg://postgres@127.0.0.1:1/none", "replica-a", lambda: None,
                      lambda nodes: None)
    feed.start()
    try:
        feed.changed()  # never raises, never blocks
        assert wait_for(lambda: "Cannot notify the other replicas" in caplog.text)
    finally:
        feed.stop()
