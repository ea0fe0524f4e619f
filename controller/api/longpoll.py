"""Long-polling heartbeats: idle workers wait on an asyncio event, not on a thread.

A worker that asks to wait (`?waitSeconds=`) and has nothing to do registers a
`Waiter` and awaits it. Waiters are woken sparingly, so that one submission does
not make a thousand idle workers run a heartbeat transaction each:

- `changed()` (a Farm change: job submitted, requeued, node uncordoned, ...) wakes
  the one waiter with free slots that has waited longest. It re-runs its heartbeat,
  which schedules for its node with the rules of the pass; if it got work, that is
  itself a change and wakes the next waiter, and so on while work is left.
- `nodes_bound(names)` (after a reconcile pass) wakes the waiters of the nodes the
  pass bound jobs to: work that the first waiter could not take (labels, selector)
  still reaches the right node as soon as the pass places it. A report that ends an
  attempt wakes its node's waiters the same way: a heartbeat sent before the report
  landed still listed the job, and looks again now that the slot is free.
- `close()` (shutdown) wakes everyone and makes new waits return at once.

Both wake calls come from any thread (the Farm runs in the thread pool, the pass in
the loop's thread); each waiter is set through its own event loop's
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(eq=False)
class Waiter:
    """One waiting heartbeat: its node, whether it could take work, and its event."""

    node: str
    free: bool
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)
    woken: bool = False

    def wake(self) -> None:
        """Set the event from any thread (once)."""
        if self.woken:
            return
        self.woken = True
        # RuntimeError: its loop is closed, the request is gone.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.event.set)


class WorkNotifier:
    """The registry of waiting heartbeats; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: OrderedDict[Waiter, None] = OrderedDict()  # free waiters, longest-waiting first
        self._by_node: dict[str, list[Waiter]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once `close()` was called: waits return at once."""
        return self._closed

    def register(self, node: str, free: bool) -> Waiter:
        """A new waiter for `node` (register before looking for work, so no change is missed)."""
        waiter = Waiter(node, free, asyncio.get_running_loop())
        with self._lock:
            if self._closed:
                waiter.wake()
                return waiter
            if free:
                self._idle[waiter] = None
            self._by_node.setdefault(node, []).append(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        """Forget a waiter (its request answered)."""
        with self._lock:
            self._idle.pop(waiter, None)
            waiters = self._by_node.get(waiter.node)
            if waiters is not None:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    del self._by_node[waiter.node]

    def rearm(self, waiter: Waiter) -> None:
        """After a wake that found nothing: wait again, at the back of the line."""
        with self._lock:
            waiter.woken = False
            waiter.event.clear()
            if self._closed:
                waiter.wake()
            elif waiter.free:
                self._idle[waiter] = None

    async def wait(self, waiter: Waiter, timeout: float) -> bool:
        """Wait until woken (True) or `timeout` seconds pass (False)."""
        if timeout <= 0:
            return waiter.event.is_set()
        try:
            await asyncio.wait_for(waiter.event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def changed(self) -> None:
        """Something changed that may be work: wake the longest-waiting free waiter."""
        with self._lock:
            while self._idle:
                waiter, _ = self._idle.popitem(last=False)
                if not waiter.woken:
                    waiter.wake()
                    return

    def nodes_bound(self, nodes: Iterable[str]) -> None:
        """The pass bound jobs to these nodes, or freed a slot there: wake their waiters."""
        with self._lock:
            for node in set(nodes):
                for waiter in self._by_node.get(node, ()):
                    self._idle.pop(waiter, None)
                    waiter.wake()

    def close(self) -> None:
        """Shutting down: wake every waiter; later waits return at once."""
        with self._lock:
            self._closed = True
            for waiters in self._by_node.values():
                for waiter in waiters:
                    waiter.wake()
            self._idle.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._by_node.values())
