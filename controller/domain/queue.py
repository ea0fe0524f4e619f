"""The priority queue order and node placement, as pure functions.

Order (SPEC section 5): effective priority DESC, then class, then `createdAt` ASC,
then name. Within one class the effective priority never increases along
`createdAt` (older jobs have waited longer), so each class is an already sorted
run and the whole queue is a k-way merge of five index scans: no full sort, and
no need to hold the queue in memory.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from controller.config import QueueConfig
from controller.domain.states import Priority

LIVE_WEIGHT = Priority.LIVE.weight


def effective_priority(
    priority: Priority, created_at: datetime, now: datetime, config: QueueConfig
) -> int:
    """Weight plus one per full aging interval waited, capped; live jobs don't age."""
    weight = priority.weight
    if priority is Priority.LIVE or config.aging_interval_seconds == 0:
        return weight
    waited = max((now - created_at).total_seconds(), 0.0)
    aged = weight + int(waited // config.aging_interval_seconds)
    # Nothing ages past live: at the live weight the class order still puts live first.
    cap = min(config.aging_cap, LIVE_WEIGHT)
    return max(weight, min(aged, cap))


QueueKey = tuple[int, int, datetime, str]


def queue_key(
    priority: Priority, created_at: datetime, name: str, now: datetime, config: QueueConfig
) -> QueueKey:
    """Sort key of a pending job: smaller comes first."""
    return (-effective_priority(priority, created_at, now, config), -priority.rank, created_at, name)


@dataclass(frozen=True, slots=True)
class Queued:
    """A pending job as the queue sees it."""

    name: str
    priority: Priority
    created_at: datetime


class QueueEntry(Protocol):
    """What the queue order reads of a pending job (`Queued`, or the store's own rows)."""

    @property
    def name(self) -> str: ...

    @property
    def priority(self) -> Priority: ...

    @property
    def created_at(self) -> datetime: ...


T = TypeVar("T", bound=QueueEntry)


def merge_classes(
    runs: Mapping[Priority, Iterable[T]], now: datetime, config: QueueConfig
) -> Iterator[T]:
    """Merge per-class runs (each in `createdAt, name` order) into the queue order."""
    # (key, run, position, job): never two equal prefixes, so jobs are never compared and
    # the tuples merge as they are, without a key function called per comparison.
    keyed = [_keyed(run, r, now, config) for r, run in enumerate(runs.values())]
    for _, _, _, job in heapq.merge(*keyed):
        yield job


# Jobs closer than this to an aging boundary get their effective priority computed, not reused.
_BOUNDARY_MARGIN = timedelta(milliseconds=1)


def _keyed(
    run: Iterable[T], r: int, now: datetime, config: QueueConfig
) -> Iterator[tuple[QueueKey, int, int, T]]:
    """A run's jobs with their queue keys, as `merge_classes` merges them.

    Along a run of one class `createdAt` grows, so the effective priority can only
    fall. It is computed by `effective_priority` for the first job and again past
    the point where it may have changed (a millisecond before the aging boundary,
    so rounding never decides), and reused in between: thousands of jobs of a class
    share a handful of values.
    """
    interval = config.aging_interval_seconds
    priority: Priority | None = None
    effective = 0
    settled_until = now  # jobs created at or before this keep `effective`; later ones may not
    forever = False  # the class's lowest value (its weight), or no aging: it holds for the rest
    for i, job in enumerate(run):
        created = job.created_at
        if job.priority is not priority or not (forever or created <= settled_until):
            priority = job.priority
            effective = effective_priority(priority, created, now, config)
            aged = effective - priority.weight
            forever = aged <= 0 or priority is Priority.LIVE or interval == 0
            if not forever:
                # Waited at least `aged` intervals exactly when created at or before this time.
                settled_until = now - timedelta(seconds=aged * interval) - _BOUNDARY_MARGIN
        yield (-effective, -priority.rank, created, job.name), r, i, job


def sort_queue(jobs: Iterable[T], now: datetime, config: QueueConfig) -> list[T]:
    """The queue order of an in-memory collection (reference for tests and small sets)."""
    return sorted(jobs, key=lambda j: queue_key(j.priority, j.created_at, j.name, now, config))


Requirements = frozenset[tuple[str, str]]


def requirements(
    node_selector: Mapping[str, str], requires: Mapping[str, str]
) -> Requirements | None:
    """The labels a node must carry; None when selector and scenario contradict each other."""
    merged = dict(requires)
    for key, value in node_selector.items():
        if merged.get(key, value) != value:
            return None
        merged[key] = value
    return frozenset(merged.items())


@dataclass(slots=True)
class FreeNode:
    """A ready, schedulable node with room, as placement sees it."""

    name: str
    free: int
    labels: Mapping[str, str]


@dataclass
class Placement:
    """Picks nodes for jobs within one pass: most free slots first, then by name.

    Each distinct set of requirements gets a lazily built heap of the nodes that
    match it. Free slots only shrink during a pass, so a heap entry whose count is
    out of date is re-pushed with the current count when it reaches the top.
    """

    nodes: dict[str, FreeNode]
    remaining: int = 0
    """Free slots left across every node."""
    matching: dict[Requirements, list[str]] = field(default_factory=dict)
    heaps: dict[Requirements, list[tuple[int, str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, nodes: Iterable[FreeNode]) -> Placement:
        """A placement over the given nodes (nodes with zero free slots may be included)."""
        by_name = {n.name: n for n in nodes}
        return cls(by_name, remaining=sum(n.free for n in by_name.values()))

    def _matching(self, needs: Requirements) -> list[str]:
        names = self.matching.get(needs)
        if names is None:
            names = [
                n.name
                for n in self.nodes.values()
                if all(n.labels.get(k) == v for k, v in needs)
            ]
            self.matching[needs] = names
        return names

    def any_match(self, needs: Requirements) -> bool:
        """True when some node (full or not) carries the required labels."""
        return bool(self._matching(needs))

    def place(self, needs: Requirements) -> str | None:
        """Take a slot on the best matching node; None when every match is full."""
        heap = self.heaps.get(needs)
        if heap is None:
            heap = [(-self.nodes[n].free, n) for n in self._matching(needs) if self.nodes[n].free]
            heapq.heapify(heap)
            self.heaps[needs] = heap
        while heap:
            neg_free, name = heap[0]
            current = self.nodes[name].free
            if -neg_free == current:
                node = self.nodes[name]
                node.free -= 1
                self.remaining -= 1
                if node.free:
                    heapq.heapreplace(heap, (-node.free, name))
                else:
                    heapq.heappop(heap)
                return name
            if current:
                heapq.heapreplace(heap, (-current, name))
            else:
                heapq.heappop(heap)
        return None
