"""The filesystem side of the watched directory: a watchdog observer and a debouncer.

The resolved root is watched recursively, and the root's parent without recursion,
so that a swap of a symlinked root (git-sync publishing `manifests -> .rev-def`) or
a root deleted and created again is seen. Events only wake the source (after
DEBOUNCE_SECONDS of quiet); `DirectorySource.sync` re-resolves the root, moves the
recursive watch to the new target, and compares the files with the database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from controller.manifests.validate import is_manifest_name

log = logging.getLogger("controller.sources")

DEBOUNCE_SECONDS = 0.15
"""Quiet time after the last event before the loop is woken (an editor's save is several events)."""
MAX_DELAY_SECONDS = 0.5
"""Longest wait after the first event, so a file written continuously is still picked up."""

_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})
"""Event types that can change a file (reading one, `opened`/`closed_no_write`, cannot)."""
_PARENT_EVENTS: list[type[FileSystemEvent]] = [
    DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent]
"""What the root's parent is watched for: the root appearing, going or being swapped. Not
writes to its other entries (asked of the kernel too, so that a busy database file next to
the root, say, does not wake the observer on every write)."""


class Watch:
    """Watches `root` (followed when a symlink) and calls `on_events` once events settle."""

    def __init__(self, root: Path, on_events: Callable[[], None]) -> None:
        self.root = root
        self._observer: BaseObserver | None = None
        self._tree: ObservedWatch | None = None
        self._target: str | None = None
        self._lock = threading.Lock()
        self._debounce = _Debouncer(on_events)

    @property
    def running(self) -> bool:
        """True while the observer thread runs."""
        return self._observer is not None and self._observer.is_alive()

    def start(self) -> None:
        """Start the observer (idempotent) and watch the root's current target."""
        with self._lock:
            if self._observer is not None:
                return
            observer = Observer()
            parent = self.root.parent
            if parent != self.root and parent.is_dir():
                observer.schedule(_ParentHandler(self), str(parent), recursive=False,
                                  event_filter=_PARENT_EVENTS)
            observer.start()
            self._observer = observer
            self._debounce.start()
        self.resolve()

    def stop(self) -> None:
        """Stop the observer and the debouncer."""
        with self._lock:
            observer, self._observer = self._observer, None
            self._tree = None
            self._target = None
        if observer is not None:
            observer.stop()
            observer.join(5)
        self._debounce.stop()

    def resolve(self) -> Path | None:
        """The root's current target (None when missing); re-watched when it changed."""
        root = self.root
        target = os.path.realpath(root) if root.is_dir() else None
        with self._lock:
            if self._observer is not None and target != self._target:
                if self._tree is not None:
                    with contextlib.suppress(KeyError, OSError):  # the old target is gone
                        self._observer.unschedule(self._tree)
                    self._tree = None
                if target is not None:
                    try:
                        self._tree = self._observer.schedule(
                            _TreeHandler(self, target), target, recursive=True
                        )
                    except OSError as exc:
                        log.warning("[Manifests] Cannot watch %s: %s", target, exc)
                        target = None
                self._target = target
                log.info("[Manifests] Watching %s%s", root,
                         f" (-> {target})" if target and target != str(root) else "")
        return Path(target) if target is not None else None

    def event(self) -> None:
        """A relevant event happened (called from the observer thread)."""
        self._debounce.poke()


class _TreeHandler(FileSystemEventHandler):
    """Events under the resolved root: manifest files and folders, not hidden, not leftovers."""

    def __init__(self, watch: Watch, base: str) -> None:
        self.watch = watch
        self.base = base

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _EVENTS:
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if any(self._relevant(os.fsdecode(p), event.is_directory) for p in paths if p):
            self.watch.event()

    def _relevant(self, path: str, is_directory: bool) -> bool:
        relative = os.path.relpath(path, self.base)
        if relative == ".":
            return True
        parts = Path(relative).parts
        if any(p.startswith(".") for p in parts):
            return False
        return is_directory or is_manifest_name(parts[-1])


class _ParentHandler(FileSystemEventHandler):
    """Events in the root's parent: only those naming the root (a swapped link, a new folder)."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.name = watch.root.name

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _EVENTS:
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if any(os.path.basename(os.fsdecode(p)) == self.name for p in paths if p):
            self.watch.event()


class _Debouncer:
    """Calls `fire` once events have been quiet for DEBOUNCE_SECONDS (at most MAX_DELAY_SECONDS
    after the first), from its own thread."""

    def __init__(self, fire: Callable[[], None]) -> None:
        self.fire = fire
        self._cond = threading.Condition()
        self._first: float | None = None
        self._last = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ffrtmp-manifests", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def poke(self) -> None:
        with self._cond:
            self._last = time.monotonic()
            if self._first is None:
                self._first = self._last
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._first is None:
                        self._cond.wait()
                        continue
                    due = min(self._last + DEBOUNCE_SECONDS, self._first + MAX_DELAY_SECONDS)
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
                self._first = None
            try:
                self.fire()
            except Exception:
                log.exception("[Manifests] Waking the reconcile loop failed")
