"""Time-frozen testing of a farm: the `Cluster` harness and the `ffrtmp_cluster` pytest fixture.

A `Cluster` is a controller without threads or HTTP: an in-memory database
(or the one you configure), a frozen clock (freezegun), and methods that play the
workers' and operators' parts. Time moves only when you call `tick`, and the
controller acts only when you call `reconcile`, so a test states exactly what
happens, at which second::

    from controller.testing import Cluster

    def test_dead_node_requeues():
        with Cluster(start="2026-01-01T10:00:00Z") as c:
            c.apply(MANIFESTS)
            c.heartbeat("worker-01")
            c.reconcile()
            c.report("job-a", "running")
            c.tick(61)
            c.reconcile()
            assert c.node("worker-01").status == "dead"
            assert c.job("job-a").status == "pending"

Installed with ffrtmp, the pytest plugin gives the fixture `ffrtmp_cluster` (a
Cluster started at 2026-01-01T00:00:00Z with the default config).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from freezegun import freeze_time

from controller.config import ControllerConfig, load_config, merge_settings
from controller.domain.states import Priority
from controller.farm import Farm, HeartbeatReply, ReportResult, StaleAttempt
from controller.manifests.loader import Problem
from controller.manifests.validate import validate_paths, validate_texts
from controller.reconcile import PassResult, Reconciler
from controller.sources.apply import ObjectResult, Origin, Outcome
from controller.store import migrate, views
from controller.store.engine import Store
from controller.store.timeouts import refresh_assigned_timeouts, refresh_running_timeouts

__all__ = ["Cluster", "ManifestError", "StaleAttempt", "ffrtmp_cluster"]

_MEMORY = {"database": {"url": "sqlite://"}}


class ManifestError(ValueError):
    """Manifests given to `Cluster.apply` had problems; nothing was applied."""

    def __init__(self, problems: Sequence[Problem | str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Cluster:
    """A controller under a frozen clock, driven step by step (see the module docstring)."""

    def __init__(
        self,
        start: str | datetime = "2026-01-01T00:00:00Z",
        config: Mapping[str, Any] | ControllerConfig | None = None,
    ) -> None:
        if isinstance(config, ControllerConfig):
            self.config = config
        else:
            # The environment is ignored: a test sees the same config on every machine.
            self.config = load_config(env={}, overrides=merge_settings(_MEMORY, config or {}))
        self._start = start
        self._freezer: Any = None
        self._frozen: Any = None
        self._store: Store | None = None
        self._farm: Farm | None = None
        self._reconciler: Reconciler | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self._freezer = freeze_time(self._start, tz_offset=0)
        self._frozen = self._freezer.start()
        try:
            store = Store.from_config(self.config.database)
            migrate.upgrade(store)
            self._store = store
            now = self.now()
            with store.write() as session:
                # A restart on the same database: deadlines follow this run's config.
                refresh_assigned_timeouts(session, self.config)
                refresh_running_timeouts(session, self.config)
            self._reconciler = Reconciler(store, self.config, started_at=now)
            self._farm = Farm(store, self.config, clock=self.now)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the database and unfreeze the clock."""
        if self._store is not None:
            self._store.dispose()
            self._store = None
        if self._freezer is not None:
            self._freezer.stop()
            self._freezer = None

    @property
    def store(self) -> Store:
        """The database handle (for assertions the methods below don't cover)."""
        assert self._store is not None, "use the Cluster inside `with`"
        return self._store

    @property
    def farm(self) -> Farm:
        """The domain operations the API would call."""
        assert self._farm is not None, "use the Cluster inside `with`"
        return self._farm

    @property
    def reconciler(self) -> Reconciler:
        """The reconciler (its `started_at` is this Cluster's start)."""
        assert self._reconciler is not None, "use the Cluster inside `with`"
        return self._reconciler

    # --- time ----------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The frozen now (timezone-aware UTC)."""
        return datetime.now(UTC)

    def tick(self, seconds: float) -> datetime:
        """Move the frozen clock forward; returns the new now."""
        self._frozen.tick(timedelta(seconds=seconds))
        return self.now()

    # --- the controller ------------------------------------------------------------------------

    def reconcile(self) -> PassResult:
        """One reconcile pass at the frozen now."""
        return self.reconciler.reconcile(self.now())

    def apply(self, manifests: str | Path, dry_run: bool = False) -> list[ObjectResult]:
        """Apply YAML text or a file/directory path, as `POST /apply` would.

        Raises ManifestError (and applies nothing) when a manifest is invalid or an
        object is refused.
        """
        if isinstance(manifests, Path) or (
            "\n" not in manifests and (manifests.endswith((".yaml", ".yml")) or Path(manifests).is_dir())
        ):
            report = validate_paths([manifests])
        else:
            report = validate_texts({"<apply>": manifests})
        if report.problems:
            raise ManifestError(report.problems)
        results = self.farm.apply([o.manifest for o in report.objects], Origin("api"), dry_run=dry_run)
        errors = [f"{r.kind}/{r.name}: {r.error}" for r in results if r.result is Outcome.ERROR]
        if errors:
            raise ManifestError(errors)
        return results

    def submit(
        self, scenario: str, priority: Priority | str = Priority.MEDIUM, name: str | None = None,
        parameters: Mapping[str, Any] | None = None, **spec: Any,
    ) -> str:
        """Create a job from fields (`POST /jobs`); returns its name."""
        return self.farm.submit(scenario, priority, parameters, name, spec or None)

    # --- workers -------------------------------------------------------------------------------

    def heartbeat(
        self,
        name: str,
        slots: int | None = None,
        labels: Mapping[str, str] | None = None,
        running: Sequence[str | tuple[str, int]] | None = None,
    ) -> HeartbeatReply:
        """A heartbeat from `name` (registers it if needed); declared slots/labels kept when omitted.

        `running` lists what the worker holds: job names (their current attempt) or
        (job, attempt) pairs. None says nothing about running work.
        """
        held = None
        if running is not None:
            held = [r if isinstance(r, tuple) else (r, self.job(r).attempt) for r in running]
        return self.farm.heartbeat(name, slots, labels, held)

    def report(
        self,
        name: str,
        state: str,
        attempt: int | None = None,
        exit_code: int | None = None,
        message: str | None = None,
        reason: str | None = None,
    ) -> ReportResult:
        """A worker report; the attempt defaults to the job's current one.

        Raises `controller.StaleAttempt` for an attempt that is not current; a report
        already applied does nothing.
        """
        if attempt is None:
            attempt = self.job(name).attempt
        return self.farm.report(name, attempt, state, exit_code=exit_code, message=message,
                                reason=reason)

    # --- operators -----------------------------------------------------------------------------

    def cancel(self, name: str) -> str:
        """Cancel a job."""
        return self.farm.cancel(name)

    def retry(self, name: str) -> str:
        """Retry a failed or cancelled job."""
        return self.farm.retry(name)

    # --- reads ---------------------------------------------------------------------------------

    def job(self, name: str) -> views.JobView:
        """One job (KeyError if there is none)."""
        with self.store.read() as session:
            job = views.get_job(session, name, self.config)
        if job is None:
            raise KeyError(f"no job {name!r}")
        return job

    def jobs(self) -> list[views.JobView]:
        """Every job, in creation order."""
        return list(self._all(lambda s, after: views.list_jobs(s, self.config, after_id=after, limit=1000)))

    def node(self, name: str) -> views.NodeView:
        """One node (KeyError if there is none)."""
        with self.store.read() as session:
            node = views.get_node(session, name)
        if node is None:
            raise KeyError(f"no node {name!r}")
        return node

    def nodes(self) -> list[views.NodeView]:
        """Every node, in creation order."""
        return list(self._all(lambda s, after: views.list_nodes(s, after_id=after, limit=1000)))

    def queue_stats(self) -> dict[str, Any]:
        """The `GET /queue/stats` shape."""
        with self.store.read() as session:
            return views.queue_stats(session)

    def audit(self, entity: str | None = None, event_type: str | None = None) -> list[views.AuditEntry]:
        """Audit entries, oldest first; `entity` is `job/NAME` or `node/NAME`."""
        entity_type = entity_id = None
        if entity is not None:
            entity_type, _, entity_id = entity.partition("/")
        return list(self._all(lambda s, after: views.list_audit(
            s, entity_type=entity_type, entity_id=entity_id or None, event_type=event_type,
            after_id=after, limit=1000)))

    def _all(self, page: Any) -> Iterator[Any]:
        after = None
        while True:
            with self.store.read() as session:
                items, after = page(session, after)
            yield from items
            if after is None:
                return


@pytest.fixture
def ffrtmp_cluster() -> Iterator[Cluster]:
    """A Cluster at 2026-01-01T00:00:00Z with the default config and an in-memory database."""
    with Cluster() as cluster:
        yield cluster
