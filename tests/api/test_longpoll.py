"""The long-poll registry: who is woken by a change, by a pass's bindings, and at shutdown."""

from __future__ import annotations

import asyncio
import threading

from controller.api.longpoll import WorkNotifier


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_change_wakes_the_longest_waiting_free_waiter_only() -> None:
    async def scenario() -> list[bool]:
        notifier = WorkNotifier()
        first = notifier.register("a", free=True)
        full = notifier.register("b", free=False)
        second = notifier.register("c", free=True)
        notifier.changed()
        await asyncio.sleep(0)
        woken = [w.event.is_set() for w in (first, full, second)]
        notifier.rearm(first)  # found nothing: back of the line
        notifier.changed()
        await asyncio.sleep(0)
        return [*woken, second.event.is_set(), first.event.is_set()]

    assert run(scenario()) == [True, False, False, True, False]


def test_a_pass_wakes_the_nodes_it_bound_and_close_wakes_everyone() -> None:
    async def scenario() -> tuple[list[bool], list[bool], bool]:
        notifier = WorkNotifier()
        a, b = notifier.register("a", free=False), notifier.register("b", free=True)
        notifier.nodes_bound(["a"])
        await asyncio.sleep(0)
        bound = [a.event.is_set(), b.event.is_set()]
        notifier.close()
        await asyncio.sleep(0)
        late = notifier.register("c", free=True)
        await asyncio.sleep(0)
        return bound, [a.event.is_set(), b.event.is_set()], late.event.is_set()

    assert run(scenario()) == ([True, False], [True, True], True)


def test_a_wake_from_another_thread_ends_the_wait_before_its_timeout() -> None:
    async def scenario() -> tuple[bool, int]:
        notifier = WorkNotifier()
        waiter = notifier.register("a", free=True)
        threading.Timer(0.01, notifier.changed).start()
        woken = await notifier.wait(waiter, timeout=5)
        notifier.unregister(waiter)
        return woken, len(notifier)

    assert run(scenario()) == (True, 0)


def test_a_wait_without_wake_times_out() -> None:
    async def scenario() -> bool:
        notifier = WorkNotifier()
        return await notifier.wait(notifier.register("a", free=True), timeout=0.01)

    assert run(scenario()) is False
