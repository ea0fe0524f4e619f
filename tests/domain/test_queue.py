"""Queue order and placement as pure functions."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import QueueConfig
from controller.domain.queue import (
    FreeNode,
    Placement,
    Queued,
    effective_priority,
    merge_classes,
    requirements,
    sort_queue,
)
from controller.domain.states import Priority

T0 = datetime(2026, 1, 1, tzinfo=UTC)
Q = QueueConfig()
CLASSES = list(Priority)  # most urgent first


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(("higher", "lower"), list(itertools.combinations(CLASSES, 2)))
def test_every_pair_of_classes_is_ordered(higher: Priority, lower: Priority) -> None:
    # The lower class was submitted first; the higher still goes first (no aging yet).
    jobs = [Queued("a-lower", lower, at(0)), Queued("b-higher", higher, at(1))]
    assert [j.name for j in sort_queue(jobs, at(2), Q)] == ["b-higher", "a-lower"]


def test_fifo_within_a_class_then_name() -> None:
    jobs = [Queued("c", Priority.MEDIUM, at(2)), Queued("b", Priority.MEDIUM, at(1)),
            Queued("a", Priority.MEDIUM, at(2))]
    assert [j.name for j in sort_queue(jobs, at(3), Q)] == ["b", "a", "c"]


def test_low_and_batch_share_a_weight_but_low_goes_first() -> None:
    jobs = [Queued("batch", Priority.BATCH, at(0)), Queued("low", Priority.LOW, at(5))]
    assert [j.name for j in sort_queue(jobs, at(10), Q)] == ["low", "batch"]


def test_aging_adds_one_per_full_interval() -> None:
    assert effective_priority(Priority.LOW, at(0), at(299), Q) == 1
    assert effective_priority(Priority.LOW, at(0), at(300), Q) == 2
    assert effective_priority(Priority.LOW, at(0), at(899), Q) == 3


def test_an_aged_job_overtakes_a_younger_higher_class() -> None:
    old_low = Queued("old-low", Priority.LOW, at(0))  # weight 1, +1 per 300 s waited
    new_high = Queued("new-high", Priority.HIGH, at(850))  # weight 3
    # At 899 s both are at 3: the class decides. At 900 s the low job reaches 4.
    assert [j.name for j in sort_queue([new_high, old_low], at(899), Q)] == ["new-high", "old-low"]
    assert [j.name for j in sort_queue([new_high, old_low], at(900), Q)] == ["old-low", "new-high"]


def test_aging_is_capped_and_never_passes_live() -> None:
    ancient = Queued("ancient-batch", Priority.BATCH, at(0))
    live = Queued("live", Priority.LIVE, at(10**6))
    now = at(10**6 + 1)
    assert effective_priority(Priority.BATCH, at(0), now, Q) == 9
    assert [j.name for j in sort_queue([ancient, live], now, Q)] == ["live", "ancient-batch"]
    wide = QueueConfig(aging_cap=50)
    assert effective_priority(Priority.BATCH, at(0), now, wide) == 10
    assert [j.name for j in sort_queue([ancient, live], now, wide)] == ["live", "ancient-batch"]


def test_live_jobs_do_not_age() -> None:
    assert effective_priority(Priority.LIVE, at(0), at(10**6), Q) == 10


def test_aging_interval_zero_is_strict_priority() -> None:
    strict = QueueConfig(aging_interval_seconds=0)
    jobs = [Queued("old-batch", Priority.BATCH, at(0)), Queued("new-high", Priority.HIGH, at(10**6))]
    assert [j.name for j in sort_queue(jobs, at(10**6 + 1), strict)] == ["new-high", "old-batch"]


def test_cap_below_a_weight_does_not_lower_it() -> None:
    assert effective_priority(Priority.HIGH, at(0), at(10**5), QueueConfig(aging_cap=1)) == 3


@given(
    st.lists(
        st.tuples(st.sampled_from(CLASSES), st.integers(min_value=0, max_value=5000)),
        min_size=0, max_size=60,
    ),
    st.integers(min_value=0, max_value=20000),
    st.sampled_from([0, 1, 60, 300]),
)
def test_merging_per_class_runs_equals_sorting_everything(
    spec: list[tuple[Priority, int]], now_offset: int, interval: int
) -> None:
    config = QueueConfig(aging_interval_seconds=interval)
    jobs = [Queued(f"j{i:03d}", p, at(t)) for i, (p, t) in enumerate(spec)]
    now = at(5000 + now_offset)
    runs = {
        p: sorted((j for j in jobs if j.priority is p), key=lambda j: (j.created_at, j.name))
        for p in CLASSES
    }
    assert list(merge_classes(runs, now, config)) == sort_queue(jobs, now, config)


@given(
    st.lists(
        st.tuples(st.sampled_from(CLASSES), st.integers(min_value=0, max_value=12),
                  st.integers(min_value=-2000, max_value=2000)),
        min_size=0, max_size=60,
    ),
    st.sampled_from([1, 0.25, 300, 7.5]),
)
def test_merging_is_exact_at_aging_boundaries(
    spec: list[tuple[Priority, int, int]], interval: float
) -> None:
    # Jobs within microseconds of a whole number of intervals before now: the merge
    # reuses effective priorities between boundaries and must agree with each job's own.
    config = QueueConfig(aging_interval_seconds=interval)
    now = at(10_000)
    jobs = [
        Queued(f"j{i:03d}", p, now - timedelta(seconds=k * interval, microseconds=us))
        for i, (p, k, us) in enumerate(spec)
    ]
    runs = {
        p: sorted((j for j in jobs if j.priority is p), key=lambda j: (j.created_at, j.name))
        for p in CLASSES
    }
    assert list(merge_classes(runs, now, config)) == sort_queue(jobs, now, config)


def test_merging_never_compares_jobs_even_with_equal_keys() -> None:
    # Jobs are not orderable; two with the same key keep the order of their runs.
    twin = Queued("same", Priority.MEDIUM, at(0))
    other = Queued("same", Priority.MEDIUM, at(0))
    runs = {Priority.MEDIUM: [twin, other], Priority.LOW: [Queued("low", Priority.LOW, at(0))]}
    merged = list(merge_classes(runs, at(10), Q))
    assert merged[0] is twin and merged[1] is other and merged[2].name == "low"


# --- placement ---------------------------------------------------------------------------------


def test_most_free_slots_first_then_name() -> None:
    p = Placement.of([FreeNode("b", 2, {}), FreeNode("a", 2, {}), FreeNode("c", 3, {})])
    picks = [p.place(frozenset()) for _ in range(7)]
    assert picks == ["c", "a", "b", "c", "a", "b", "c"]
    assert p.place(frozenset()) is None
    assert p.remaining == 0


def test_selector_limits_candidates() -> None:
    p = Placement.of([FreeNode("a", 5, {"zone": "a"}), FreeNode("b", 1, {"zone": "b"})])
    needs = requirements({"zone": "b"}, {})
    assert needs is not None
    assert p.place(needs) == "b"
    assert p.place(needs) is None
    assert p.any_match(needs)
    assert p.place(frozenset()) == "a"


def test_contradicting_selector_and_requires_match_nothing() -> None:
    assert requirements({"ffmpeg": "false"}, {"ffmpeg": "true"}) is None
    assert requirements({"zone": "a"}, {"ffmpeg": "true"}) == frozenset(
        {("zone", "a"), ("ffmpeg", "true")}
    )


def test_placement_matches_a_brute_force_reference() -> None:
    rng = random.Random(7)
    nodes = [FreeNode(f"n{i:02d}", rng.randint(0, 3), {"zone": rng.choice("ab")}) for i in range(20)]
    reference = {n.name: n.free for n in nodes}
    labels = {n.name: n.labels for n in nodes}
    p = Placement.of(FreeNode(n.name, n.free, n.labels) for n in nodes)
    for _ in range(60):
        zone = rng.choice(["a", "b", None])
        needs = frozenset({("zone", zone)}) if zone else frozenset()
        candidates = [n for n, free in reference.items() if free and all(labels[n].get(k) == v for k, v in needs)]
        expected = min(candidates, key=lambda n: (-reference[n], n)) if candidates else None
        assert p.place(needs) == expected
        if expected:
            reference[expected] -= 1
