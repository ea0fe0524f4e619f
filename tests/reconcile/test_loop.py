"""The reconcile loop and the seed's FaultToleranceManager: real threads, no sleeps."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from controller.config import ControllerConfig, FaultToleranceConfig
from controller.farm import Farm
from controller.loop import ReconcileLoop
from controller.managers import FaultToleranceManager
from controller.manifests.validate import validate_texts
from controller.reconcile import PassResult, Reconciler
from controller.sources.apply import Origin
from controller.store.engine import Store

MANIFESTS = """
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: s}
spec: {command: ["true"]}
---
apiVersion: ffrtmp.io/v1
kind: Job
metadata: {name: j}
spec: {scenario: s}
"""


def test_wake_runs_a_pass_long_before_the_interval(store: Store) -> None:
    passes: list[PassResult] = []
    second = threading.Event()

    def on_pass(result: PassResult) -> None:
        passes.append(result)
        if len(passes) >= 2:
            second.set()

    reconciler = Reconciler(store, ControllerConfig(), datetime.now(UTC), on_pass=on_pass)
    loop = ReconcileLoop(reconciler, interval_seconds=3600)
    loop.start()
    try:
        loop.wake()
        assert second.wait(10), "a wake did not trigger a pass"
    finally:
        loop.stop()
    assert not loop.running
    assert loop.passes >= 2


def test_a_failing_pass_does_not_kill_the_loop(store: Store) -> None:
    calls = threading.Event()
    attempts = []

    def broken_desired_state(now: datetime) -> None:
        attempts.append(now)
        if len(attempts) >= 2:
            calls.set()
        raise RuntimeError("boom")

    reconciler = Reconciler(store, ControllerConfig(), datetime.now(UTC), desired_state=broken_desired_state)
    loop = ReconcileLoop(reconciler, interval_seconds=3600)
    loop.start()
    try:
        loop.wake()
        assert calls.wait(10)
    finally:
        loop.stop()
    assert isinstance(loop.last_error, RuntimeError)


def test_fault_tolerance_manager_schedules_in_the_background(store: Store) -> None:
    manager = FaultToleranceManager(store, FaultToleranceConfig(check_interval_seconds=3600))
    done = threading.Event()
    manager.reconciler.on_pass = lambda result: done.set() if result.scheduled else None
    farm = Farm(store, manager.config, on_change=manager.wake)
    farm.heartbeat("w1", slots=1, running=[])
    manager.start()
    try:
        report = validate_texts({"m": MANIFESTS})
        farm.apply([o.manifest for o in report.objects], Origin("api"))
        assert done.wait(10), "the background pass did not schedule the job"
    finally:
        manager.stop()
    assert not manager.loop.running
