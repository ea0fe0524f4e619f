"""Idle heartbeats in batches: settled only when nothing else is due, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from controller.beats import BeatBatcher
from controller.config import ControllerConfig
from controller.farm import Farm
from controller.manifests.validate import validate_texts
from controller.sources.apply import Origin
from controller.store.engine import Store
from controller.store.group import GroupCommit
from controller.store.models import AuditLog
from controller.store.transitions import nodes_t

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
SCENARIO = "apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata: {name: enc}\nspec: {command: [echo]}\n"


def job(name: str, **spec: str) -> str:
    extra = "".join(f", {k}: {v}" for k, v in spec.items())
    return f"---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec: {{scenario: enc{extra}}}\n"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def farm_on(store: Store, clock: Clock, text: str = SCENARIO) -> Farm:
    farm = Farm(store, ControllerConfig(), clock=clock)
    report = validate_texts({"m.yaml": text})
    assert not report.problems
    farm.apply([o.manifest for o in report.objects], Origin("api"), now=T0)
    return farm


def add(farm: Farm, text: str) -> None:
    report = validate_texts({"more.yaml": SCENARIO + text})
    assert not report.problems
    farm.apply([o.manifest for o in report.objects], Origin("api"), now=T0)


def last_heartbeat(store: Store, name: str) -> datetime | None:
    with store.read() as session:
        value = session.execute(sa.select(nodes_t.c.last_heartbeat).where(nodes_t.c.name == name)).scalar()
    return value


def audit_rows(store: Store) -> int:
    with store.read() as session:
        return int(session.execute(sa.select(sa.func.count()).select_from(AuditLog)).scalar_one())


def settle(batcher: BeatBatcher, name: str, slots: int | None = 2, labels: dict[str, str] | None = None) -> bool:
    return batcher.submit(name, slots, {} if labels is None else labels).result(timeout=10)


def test_an_idle_beat_moves_the_heartbeat_and_writes_nothing_else(store: Store) -> None:
    clock = Clock()
    farm = farm_on(store, clock)
    farm.heartbeat("n1", 2, {}, [])
    before = audit_rows(store)
    clock.now = T0 + timedelta(seconds=7)
    assert settle(farm.beats, "n1") is True
    assert last_heartbeat(store, "n1") == T0 + timedelta(seconds=7)
    assert audit_rows(store) == before
    farm.close()


def test_what_the_batch_leaves_to_the_full_heartbeat(store: Store) -> None:
    clock = Clock()
    farm = farm_on(store, clock)
    farm.heartbeat("n1", 2, {"ffmpeg": "true"}, [])
    assert settle(farm.beats, "unknown") is False  # registers: the full path
    assert settle(farm.beats, "n1", labels={"ffmpeg": "false"}) is False  # labels changed
    assert settle(farm.beats, "n1", slots=3, labels={"ffmpeg": "true"}) is False  # slots changed
    assert settle(farm.beats, "n1", slots=None, labels={"ffmpeg": "true"}) is True  # slots not told
    farm.close()


def test_a_node_that_is_not_ready_is_left_to_the_full_heartbeat(store: Store) -> None:
    clock = Clock()
    farm = farm_on(store, clock)
    farm.heartbeat("n1", 2, {}, [])
    with store.write() as session:
        session.execute(sa.update(nodes_t).values(status="dead"))
    clock.now = T0 + timedelta(seconds=3)
    assert settle(farm.beats, "n1") is False
    assert last_heartbeat(store, "n1") == T0  # not ready: not even the beat is recorded here
    farm.close()


def test_pending_work_or_held_jobs_go_to_the_full_heartbeat(store: Store) -> None:
    clock = Clock()
    farm = farm_on(store, clock, SCENARIO + job("j1"))
    farm.heartbeat("n1", 1, {}, None)  # registers and is given j1
    assert settle(farm.beats, "n1", slots=1) is False  # holds j1
    farm.heartbeat("n2", 1, {}, [])
    add(farm, job("j2"))
    farm.heartbeat("n3", 1, {}, [])  # takes j2
    add(farm, job("j3"))
    assert settle(farm.beats, "n2", slots=1) is False  # j3 waits and n2 could take it
    with store.write() as session:
        session.execute(sa.update(nodes_t).where(nodes_t.c.name == "n2").values(unschedulable=True))
    assert settle(farm.beats, "n2", slots=1) is True  # cordoned: nothing for it to take
    farm.close()


def test_many_beats_share_transactions_and_each_is_answered(store: Store) -> None:
    clock = Clock()
    farm = farm_on(store, clock)
    names = [f"n{i}" for i in range(60)]
    for name in names:
        farm.heartbeat(name, 2, {}, [])
    clock.now = T0 + timedelta(seconds=4)
    futures = [farm.beats.submit(name, 2, {}) for name in names] + [farm.beats.submit("ghost", 2, {})]
    answers = [f.result(timeout=10) for f in futures]
    assert answers == [True] * 60 + [False]
    assert farm.writer.units == 61
    assert farm.writer.batches < 61
    assert all(last_heartbeat(store, n) == clock.now for n in names)
    farm.close()


def test_after_close_every_beat_takes_the_full_path(store: Store) -> None:
    clock = Clock()
    farm = farm_on(store, clock)
    farm.heartbeat("n1", 2, {}, [])
    farm.close()
    assert settle(farm.beats, "n1") is False


def test_a_failing_batch_answers_false_and_the_thread_goes_on(store: Store) -> None:
    clock = Clock()
    farm = farm_on(store, clock)
    farm.heartbeat("n1", 2, {}, [])
    writer = GroupCommit(store)
    batcher = BeatBatcher(writer, lambda: datetime(2026, 1, 1))  # naive: refused by the store
    assert settle(batcher, "n1") is False
    batcher.clock = clock
    assert settle(batcher, "n1") is True
    writer.close()


def test_two_first_beats_of_one_node_at_once_both_succeed(db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from controller.config import DatabaseConfig

    stores = [Store.from_config(DatabaseConfig(url=db_url)) for _ in range(2)]
    farms = [Farm(s, ControllerConfig(), clock=Clock()) for s in stores]  # two replicas
    try:
        for i in range(15):
            barrier = Barrier(2)

            def beat(farm: Farm, name: str = f"new-{i}", barrier: Barrier = barrier) -> bool:
                barrier.wait(5)
                return farm.heartbeat(name, 2, {}, []).registered

            with ThreadPoolExecutor(2) as pool:
                registered = list(pool.map(beat, farms))
            assert sorted(registered) == [False, True]  # one registered it, the other beat it
        with stores[0].read() as session:
            count = session.execute(sa.select(sa.func.count()).select_from(nodes_t)).scalar_one()
        assert count == 15
    finally:
        for store in stores:
            store.dispose()


def test_two_first_beats_through_two_writers_both_succeed(db_url: str) -> None:
    from controller.config import DatabaseConfig

    stores = [Store.from_config(DatabaseConfig(url=db_url)) for _ in range(2)]
    farms = [Farm(s, ControllerConfig(), clock=Clock()) for s in stores]  # two replicas
    try:
        for i in range(15):
            futures = [farm.heartbeat_batched(f"fresh-{i}", 2, {}, []) for farm in farms]
            replies = [f.result(timeout=10) for f in futures if f is not None]
            assert len(replies) == 2
            assert sorted(r.registered for r in replies) == [False, True]
    finally:
        for farm in farms:
            farm.close()
        for store in stores:
            store.dispose()


def test_a_report_that_ends_an_attempt_says_whose_slot_is_free(store: Store) -> None:
    # A waiting heartbeat of that node is woken by it (controller.api.longpoll).
    clock = Clock()
    farm = farm_on(store, clock, SCENARIO + job("j1") + job("j2"))
    freed: list[str] = []
    farm.on_freed = freed.append
    reply = farm.heartbeat("w1", 1, None, [])
    assert [a.job for a in reply.assignments] == ["j1"]
    farm.report("j1", 1, "running", node="w1")
    assert freed == []
    farm.report("j1", 1, "completed", exit_code=0, node="w1")
    assert freed == ["w1"]
    farm.report("j1", 1, "completed", exit_code=0, node="w1")  # a repeat changes nothing
    assert freed == ["w1"]
    reply = farm.heartbeat("w1", 1, None, [])
    assert [a.job for a in reply.assignments] == ["j2"]
    farm.report("j2", 1, "failed", exit_code=3, node="w1")  # back to pending for a retry
    assert freed == ["w1", "w1"]


def node_row(store: Store, name: str) -> Any:
    with store.read() as session:
        return session.execute(sa.select(nodes_t).where(nodes_t.c.name == name)).one()


def test_a_draining_node_gets_nothing_from_a_pass_until_it_beats_normally(store: Store) -> None:
    from controller.reconcile import Reconciler

    clock = Clock()
    farm = farm_on(store, clock, SCENARIO + job("j1"))
    reply = farm.heartbeat("w1", 2, None, [])
    assert [a.job for a in reply.assignments] == ["j1"]
    farm.report("j1", 1, "running", node="w1")
    # SIGTERM: the worker drains, still running j1 (one slot of two free).
    farm.heartbeat("w1", 2, None, [("j1", 1)], draining=True)
    assert node_row(store, "w1").draining is True
    add(farm, job("j2"))
    passes = Reconciler(store, ControllerConfig(), started_at=T0)
    assert passes.reconcile(T0 + timedelta(seconds=1)).scheduled == []
    # An idle-looking beat of the same node is not settled by the fast path: it clears the flag.
    assert settle(farm.beats, "w1", slots=2) is False
    reply = farm.heartbeat("w1", 2, None, [("j1", 1)])
    assert node_row(store, "w1").draining is False
    assert [a.job for a in reply.assignments] == ["j2"]
