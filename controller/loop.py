"""The controller's reconcile loop: a pass every `checkIntervalSeconds`, and soon after a change.

`wake()` asks for a pass now (a new job, a heartbeat from an idle node, a
manifest event); several wakes while a pass runs give one more pass, not many.
`stop()` lets the pass in flight finish and returns. With `leading`, a pass runs
only while it answers True (several replicas: only the leader reconciles).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from controller.reconcile import PassResult, Reconciler
from controller.store.leases import NotLeader

log = logging.getLogger("controller.loop")

# Changes arriving together (a burst of submissions) are handled by one pass.
WAKE_DEBOUNCE_SECONDS = 0.005
# A pass asked for by a change starts at least this long after the previous pass
# started. Under a steady stream of changes (hundreds of reports and submissions a
# second) passes would otherwise run back to back, each taking the write lock and
# the interpreter from the requests that caused them. Nothing waits on such a pass
# for long: an idle worker is woken by the change itself and takes its work through
# its heartbeat; the pass places what no heartbeat took.
WAKE_MIN_GAP_SECONDS = 0.1


class ReconcileLoop:
    """Runs `reconciler.reconcile(now)` in a background thread."""

    def __init__(
        self,
        reconciler: Reconciler,
        interval_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        name: str = "ffrtmp-reconcile",
        leading: Callable[[], bool] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = name
        self.leading = leading
        self.passes = 0
        self.last_result: PassResult | None = None
        self.last_error: BaseException | None = None

    def start(self) -> None:
        """Start the loop thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask for a pass as soon as possible."""
        self._wake.set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the pass in flight (if any) and wait for the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        """True while the loop thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def run_once(self) -> PassResult | None:
        """One pass now, errors logged (not raised): the loop must survive a bad pass.

        None, and no pass, when this replica does not lead.
        """
        if self.leading is not None and not self.leading():
            return None
        try:
            result = self.reconciler.reconcile(self.clock())
        except NotLeader as exc:
            # The lease was lost during the pass: its fenced writes were undone.
            self.last_error = exc
            log.warning("[Leader] Reconcile pass stopped: %s", exc)
            return None
        except Exception as exc:
            self.last_error = exc
            log.exception("[FaultTolerance] Reconcile pass failed: %s", exc)
            return None
        self.passes += 1
        self.last_result = result
        self.last_error = None
        return result

    def _run(self) -> None:
        while not self._stopping.is_set():
            began = time.monotonic()
            self.run_once()
            woken = self._wake.wait(self.interval_seconds)
            if self._stopping.is_set():
                break
            if woken:
                gap = max(WAKE_DEBOUNCE_SECONDS, began + WAKE_MIN_GAP_SECONDS - time.monotonic())
                self._stopping.wait(gap)
                self._wake.clear()
