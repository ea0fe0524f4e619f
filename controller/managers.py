"""The seed's library surface: `FaultToleranceManager` and `PriorityQueueManager`.

Both are thin façades over the parts the controller itself runs (the reconcile
pass and loop, the farm operations, the queue order), for programs that embed the
controller as a library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.config import ControllerConfig, FaultToleranceConfig, QueueConfig
from controller.domain.queue import merge_classes
from controller.domain.states import Priority
from controller.farm import Farm
from controller.loop import ReconcileLoop
from controller.reconcile import PassResult, Reconciler
from controller.sources.apply import ObjectResult
from controller.store import passes, views
from controller.store.engine import Store


def _utcnow() -> datetime:
    return datetime.now(UTC)


class FaultToleranceManager:
    """Runs the reconcile loop (liveness, requeues, timeouts, scheduling) over a store."""

    def __init__(
        self,
        db: Store,
        config: FaultToleranceConfig | None = None,
        controller_config: ControllerConfig | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        base = controller_config or ControllerConfig()
        if config is not None:
            base = base.model_copy(update={"fault_tolerance": config})
        self.config = base
        self.clock = clock
        self.reconciler = Reconciler(db, base, started_at=clock())
        self.loop = ReconcileLoop(self.reconciler, base.fault_tolerance.check_interval_seconds, clock)

    def start(self) -> None:
        """Start the background loop; its start time is the liveness grace reference."""
        self.reconciler.started_at = self.clock()
        self.loop.start()

    def stop(self) -> None:
        """Stop after the pass in flight."""
        self.loop.stop()

    def wake(self) -> None:
        """Ask for a pass soon (after a change)."""
        self.loop.wake()

    def check_now(self, now: datetime | None = None) -> PassResult:
        """Run one pass synchronously."""
        return self.reconciler.reconcile(now or self.clock())


@dataclass(frozen=True)
class QueueStatistics:
    """Pending jobs by class and totals by status."""

    total_pending: int
    by_priority: dict[Priority, int]
    totals: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        """The `GET /queue/stats` shape."""
        out: dict[str, Any] = dict(self.totals)
        out["byPriority"] = {str(p): n for p, n in self.by_priority.items()}
        return out


class PriorityQueueManager:
    """The priority queue: what runs next, priority changes, statistics."""

    def __init__(
        self,
        db: Store,
        queue_config: QueueConfig | None = None,
        controller_config: ControllerConfig | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        base = controller_config or ControllerConfig()
        if queue_config is not None:
            base = base.model_copy(update={"queue": queue_config})
        self.db = db
        self.config = base
        self.clock = clock
        self.farm = Farm(db, base, clock=clock)

    def get_next_job(self, now: datetime | None = None) -> views.JobView | None:
        """The job the scheduler would bind next (eligible, in queue order), or None."""
        at = now or self.clock()
        with self.db.read() as session:
            # The scheduler's own read: pending jobs that may start at `at`, class by class.
            runs = {p: passes.eligible_run(session, p, at, batch=100) for p in Priority}
            try:
                for job in merge_classes(runs, at, self.config.queue):
                    return views.get_job(session, job.name, self.config, with_attempts=False)
            finally:
                for run in runs.values():
                    run.close()
        return None

    def set_job_priority(self, job: str | views.JobView, priority: Priority | str) -> ObjectResult:
        """Move a job to another class (audited as `job.updated`)."""
        name = job if isinstance(job, str) else job.name
        return self.farm.set_priority(name, priority)

    def get_queue_statistics(self) -> QueueStatistics:
        """Pending by class and totals by status."""
        with self.db.read() as session:
            stats = views.queue_stats(session)
        by_priority = {Priority(p): n for p, n in stats.pop("byPriority").items()}
        return QueueStatistics(stats["totalPending"], by_priority, stats)
