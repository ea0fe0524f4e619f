"""The watched manifests directory (SPEC section 3): files in, desired state out.

`DirectorySource.sync(now)` is step 1 of the reconcile pass. It is level-triggered:
it compares the directory with the `manifest_files` table (content hashes) and
applies what differs, so a missed filesystem event, a restart or a crash half-way
leaves nothing wrong for longer than the next resync. Filesystem events (watchdog)
only decide *when* to look: they are debounced, mark the source dirty and wake the
reconcile loop through `on_change`.

Per sync:

1. scan: the manifest files under the (re-resolved) root, with their stat; a file is
   read and hashed only if its stat changed (every file on a full resync);
2. the files to process: new or changed content, plus every file not `ok` (a
   conflict or a refused object may clear up when other files change); files gone;
3. plan (pure, `plan_sync`): who owns which name (the first file by path order; an
   invalid file keeps the objects of its last good state), what each file applies,
   which of its names conflict, and which objects no file declares any more;
4. one write transaction per file: take over the objects it now owns, apply them
   (`apply_objects`), prune (or release) what it dropped, store its status row and
   audit `manifest.applied` / `manifest.invalid`; then one per file gone.

Paths are relative to the root (`jobs/encode.yaml`), so a git-sync swap of the root
(`manifests -> .rev-abc` becoming `manifests -> .rev-def`) changes nothing for files
whose content is the same.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlmodel import Session

from controller.config import ControllerConfig
from controller.domain.states import Reason
from controller.farm import delete_job_row, delete_node_row
from controller.manifests.loader import MAX_MANIFEST_BYTES, Problem, format_field, load_file
from controller.manifests.schema import ParsedObject, ScenarioManifest
from controller.manifests.validate import manifest_files, validate_texts
from controller.observability.metrics import Metrics
from controller.sources.apply import ObjectResult, Origin, Outcome, apply_objects
from controller.sources.watch import Watch
from controller.store import manifest_files as mf
from controller.store.audit import write_audit
from controller.store.engine import Store

log = logging.getLogger("controller.sources")

class FileStatus(StrEnum):
    """Status of a watched file."""

    OK = "ok"
    INVALID = "invalid"
    CONFLICT = "conflict"


# --- reading the directory ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScannedFile:
    """A manifest file found under the root."""

    path: str
    """Relative to the root, POSIX separators: the file's name everywhere."""
    absolute: str
    stamp: tuple[int, int, int, int]
    """(inode, size, mtime ns, ctime ns): a file whose stamp is unchanged is not read again."""


def scan(root: Path) -> dict[str, ScannedFile]:
    """The manifest files under `root`, by relative path (a file that vanishes is skipped)."""
    found: dict[str, ScannedFile] = {}
    for absolute in manifest_files(root):
        try:
            st = absolute.stat()  # follows a symlinked file; a broken link is no file
        except OSError:
            continue
        relative = absolute.relative_to(root).as_posix()
        found[relative] = ScannedFile(
            relative, str(absolute), (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        )
    return found


def read_bytes(absolute: str) -> bytes | None:
    """At most one byte more than the manifest limit of a file; None if it cannot be read."""
    try:
        with open(absolute, "rb") as stream:
            return stream.read(MAX_MANIFEST_BYTES + 1)
    except OSError:
        return None


def content_hash(data: bytes) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """One file judged on its own: its valid objects, or the problems that quarantine it."""

    path: str
    content_hash: str
    objects: tuple[ParsedObject, ...] = ()
    problems: tuple[Problem, ...] = ()
    keys: tuple[str, ...] = field(init=False)
    """`Kind/name` of each object, in order (the plan looks them up more than once)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(key_of(o) for o in self.objects))

    @property
    def valid(self) -> bool:
        """True when the file can be applied."""
        return not self.problems


def parse_file(path: str, absolute: str, data: bytes | None) -> ParsedFile:
    """Judge one file as `ffrtmp validate FILE` would (names unique, placeholders of its own
    Scenarios); any problem makes the whole file invalid."""
    if data is None:
        return ParsedFile(path, "", problems=(Problem(path, 1, "", "cannot read the file"),))
    digest = content_hash(data)
    if len(data) > MAX_MANIFEST_BYTES:
        return ParsedFile(path, digest, problems=load_file(absolute, path).problems)
    report = validate_texts({path: data})
    if report.problems:
        return ParsedFile(path, digest, problems=report.problems)
    return ParsedFile(path, digest, objects=report.objects)


def key_of(obj: ParsedObject) -> str:
    """`Kind/name` of a parsed object."""
    return mf.object_key(obj.kind, obj.name)


# --- the plan (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FilePlan:
    """What one sync does with one file (present or gone)."""

    path: str
    parsed: ParsedFile | None
    """None for a file that is gone."""
    owned: tuple[ParsedObject, ...] = ()
    """Objects this file declares and owns: applied."""
    conflicts: tuple[tuple[ParsedObject, str], ...] = ()
    """Objects this file declares that an earlier file owns, with that file."""
    keeps: tuple[str, ...] = ()
    """The keys it owns after the sync (its `objects`)."""
    drops: tuple[str, ...] = ()
    """Keys it owned that no file declares any more: pruned (or released)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The sync's decisions: per file, and the owner of every declared name."""

    files: tuple[FilePlan, ...]
    owners: Mapping[str, str]
    unparsed_losers: tuple[str, ...] = ()
    """Unchanged files that lose a name to an earlier file: parse them and plan again."""


def plan_sync(
    paths: Sequence[str],
    stored: Mapping[str, mf.StoredFile],
    parsed: Mapping[str, ParsedFile],
) -> Plan:
    """Decide ownership and each processed file's part.

    `paths`: the files present, in path order. `stored`: every stored file with its
    objects. `parsed`: the files processed in this sync. A file not parsed declares
    what it owns (its content did not change); an invalid file keeps its last good
    objects; the first file by path order that declares a name owns it.
    """
    declared: dict[str, list[str]] = {}
    for path in paths:
        current = parsed.get(path)
        if current is not None and current.valid:
            declared[path] = list(current.keys)
        else:
            declared[path] = list(stored[path].objects) if path in stored else []
    owners: dict[str, str] = {}
    for path in paths:
        for key in declared[path]:
            owners.setdefault(key, path)
    losers = tuple(
        p for p in paths if p not in parsed and any(owners[k] != p for k in declared[p])
    )
    if losers:
        return Plan((), owners, losers)

    plans: list[FilePlan] = []
    for path in paths:
        current = parsed.get(path)
        if current is None:
            continue
        before = stored[path].objects if path in stored else []
        drops = tuple(k for k in before if k not in owners)
        if current.valid:
            mine = [owners[k] == path for k in current.keys]
            owned = tuple(o for o, m in zip(current.objects, mine, strict=True) if m)
            conflicts = tuple(
                (o, owners[k])
                for o, k, m in zip(current.objects, current.keys, mine, strict=True)
                if not m
            )
            keeps = tuple(k for k, m in zip(current.keys, mine, strict=True) if m)
            plans.append(FilePlan(path, current, owned, conflicts, keeps, drops))
        else:
            keeps = tuple(k for k in before if owners.get(k) == path)
            plans.append(FilePlan(path, current, keeps=keeps, drops=drops))
    present = set(paths)
    for path in sorted(set(stored) - present):
        drops = tuple(k for k in stored[path].objects if k not in owners)
        plans.append(FilePlan(path, None, drops=drops))
    return Plan(tuple(plans), owners)


# --- results ----------------------------------------------------------------------------------------


@dataclass
class SyncResult:
    """What one sync did: file paths and object counts (for logs, tests and the benchmark)."""

    full: bool = False
    skipped: bool = False
    """True when nothing was due (no event, no resync): the directory was not looked at."""
    scanned: int = 0
    read: int = 0
    applied: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, name: str, n: int = 1) -> None:
        """Count `n` objects under `name` (created, configured, pruned, ...)."""
        if n:
            self.counts[name] = self.counts.get(name, 0) + n


# --- the source -------------------------------------------------------------------------------------


class DirectorySource:
    """The watched directory as a source of desired state (see the module docstring).

    Wiring: `source = DirectorySource(store, config, on_change=loop.wake, metrics=metrics)`,
    `Reconciler(..., desired_state=source.sync)`, `source.start()` before the loop and
    `source.stop()` after it.
    """

    def __init__(
        self,
        store: Store,
        config: ControllerConfig,
        on_change: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        root: str | Path | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.on_change = on_change
        self.metrics = metrics
        self.clock = clock
        self.root = Path(root if root is not None else config.manifests.dir).absolute()
        self._sync_lock = threading.Lock()
        self._stamps: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        self._last_full: datetime | None = None
        self._swept = False
        self._missing_logged = False
        self._dirty = threading.Event()
        self._watch = Watch(self.root, self._events_settled)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching the directory (recursive; the root's parent too, for swaps)."""
        self._watch.start()

    def stop(self) -> None:
        """Stop watching."""
        self._watch.stop()

    @property
    def watching(self) -> bool:
        """True while the filesystem observer runs."""
        return self._watch.running

    def mark_dirty(self) -> None:
        """Look at the directory at the next sync (the observer calls this after its debounce)."""
        self._dirty.set()

    def _events_settled(self) -> None:
        self.mark_dirty()
        if self.on_change is not None:
            self.on_change()

    # --- sync ------------------------------------------------------------------------------------

    def sync(self, now: datetime | None = None, force: bool = False) -> SyncResult:
        """Apply the directory's pending changes (step 1 of the pass).

        Does nothing unless events arrived, the observer is not running (then every
        call looks, by stat), a full resync is due (first call, then every
        `manifests.resyncSeconds`) or `force` asks for one.
        """
        at = now if now is not None else self.clock()
        with self._sync_lock:
            began = time.perf_counter()
            full = (
                force
                or self._last_full is None
                or (at - self._last_full).total_seconds() >= self.config.manifests.resync_seconds
            )
            dirty = self._dirty.is_set() or not self._watch.running
            self._dirty.clear()
            if not (full or dirty):
                return SyncResult(skipped=True)
            result = SyncResult(full=full)
            with _gc_spared() as spare:
                self._sync(at, full, result, spare)
            if full:
                self._last_full = at
            result.seconds = time.perf_counter() - began
            return result

    def _sync(
        self, now: datetime, full: bool, result: SyncResult, spare: Callable[[], None]
    ) -> None:
        target = self._watch.resolve()
        if target is None:
            if not self._missing_logged:
                log.warning("[Manifests] Directory %s does not exist: nothing applied or pruned",
                            self.root)
                self._missing_logged = True
            return
        self._missing_logged = False
        files = scan(target)
        result.scanned = len(files)
        hashes, contents = self._hash(files, full, result)
        with self.store.read() as session:
            stored = mf.stored_files(session)
        changed = {p for p, h in hashes.items() if p not in stored or stored[p].content_hash != h}
        gone = set(stored) - set(files)
        unsettled = {p for p, s in stored.items() if s.status != FileStatus.OK and p in files}
        if not changed and not gone and self._swept and not (unsettled and full):
            self._gauge(stored)
            return
        # Something to do: the object lists of every file decide ownership.
        with self.store.read() as session:
            stored = mf.stored_files(session, with_objects=True)
        paths = sorted(files)
        process = changed | unsettled
        parsed: dict[str, ParsedFile] = {}
        for p in sorted(process):
            parsed[p] = self._parse(files[p], contents.get(p))
            spare()  # what a file parses lives until the sync ends
        plan = plan_sync(paths, stored, parsed)
        while plan.unparsed_losers:  # ends: every round parses more files
            parsed.update((p, self._parse(files[p], contents.get(p))) for p in plan.unparsed_losers)
            plan = plan_sync(paths, stored, parsed)
        known = _owned_scenarios(plan)
        statuses = {p: s.status for p, s in stored.items()}
        for file_plan in plan.files:
            try:
                status = self._apply_file(file_plan, stored.get(file_plan.path), known, now, result)
            except Exception:
                # The file's row is unchanged, so the next sync tries it again.
                log.exception("[Manifests] Failed to apply %s", file_plan.path)
                continue
            if status is None:
                statuses.pop(file_plan.path, None)
            else:
                statuses[file_plan.path] = status
        if not self._swept:
            self._sweep(plan.owners, now, result)
            self._swept = True
        self._gauge_statuses(statuses.values())

    def _hash(
        self, files: Mapping[str, ScannedFile], full: bool, result: SyncResult
    ) -> tuple[dict[str, str], dict[str, bytes | None]]:
        """Every file's content hash; read only when its stamp changed (always on a full resync)."""
        hashes: dict[str, str] = {}
        contents: dict[str, bytes | None] = {}
        for path, scanned in files.items():
            cached = self._stamps.get(path)
            if not full and cached is not None and cached[0] == scanned.stamp:
                hashes[path] = cached[1]
                continue
            data = read_bytes(scanned.absolute)
            result.read += 1
            contents[path] = data
            digest = content_hash(data) if data is not None else ""
            hashes[path] = digest
            self._stamps[path] = (scanned.stamp, digest)
        for path in set(self._stamps) - set(files):
            del self._stamps[path]
        return hashes, contents

    def _parse(self, scanned: ScannedFile, data: bytes | None) -> ParsedFile:
        if data is None:
            data = read_bytes(scanned.absolute)
        return parse_file(scanned.path, scanned.absolute, data)

    # --- one file, one transaction -------------------------------------------------------------------

    def _apply_file(
        self,
        plan: FilePlan,
        before: mf.StoredFile | None,
        known: Mapping[str, ScenarioManifest],
        now: datetime,
        result: SyncResult,
    ) -> str | None:
        """Apply one file's plan in its own transaction; its new status (None: forgotten)."""
        counts: dict[str, int] = {}
        with self.store.write() as session:
            if plan.parsed is None:
                self._drop(session, plan.path, plan.drops, now, counts)
                mf.delete_manifest_file(session, plan.path)
                status = None
            else:
                errors: list[dict[str, Any]] = []
                if plan.parsed.valid:
                    errors = self._apply_objects(session, plan, known, now, counts)
                else:
                    errors = [_error(p.line, p.field, p.message) for p in plan.parsed.problems]
                self._drop(session, plan.path, plan.drops, now, counts)
                status = _status(plan, errors)
                self._record(session, plan, before, status, errors, now, counts)
        for name, n in counts.items():
            result.add(name, n)
        if plan.parsed is None:
            result.removed.append(plan.path)
            log.info("[Manifests] Removed %s%s", plan.path, _summary(counts))
        elif status == FileStatus.INVALID and not plan.parsed.valid:
            result.invalid.append(plan.path)
        else:
            result.applied.append(plan.path)
            if status == FileStatus.INVALID:
                result.invalid.append(plan.path)
        return status

    def _apply_objects(
        self,
        session: Session,
        plan: FilePlan,
        known: Mapping[str, ScenarioManifest],
        now: datetime,
        counts: dict[str, int],
    ) -> list[dict[str, Any]]:
        """Take over, then apply, the file's owned objects; the errors of the file."""
        manifests = [o.manifest for o in plan.owned]
        by_kind: dict[str, list[str]] = {}
        for m in manifests:
            by_kind.setdefault(m.kind, []).append(m.name)
        for kind in mf.OBJECT_KINDS:
            names = by_kind.get(kind)
            if names:
                moved = mf.take_ownership(session, kind, names, plan.path)
                counts["moved"] = counts.get("moved", 0) + len(moved)
        outcomes = apply_objects(
            session, manifests, Origin("file", plan.path), now, self.config, known_scenarios=known
        )
        errors: list[dict[str, Any]] = []
        tally: dict[Outcome, int] = {}
        for obj, outcome in zip(plan.owned, outcomes, strict=True):
            tally[outcome.result] = tally.get(outcome.result, 0) + 1
            if outcome.result is Outcome.ERROR:
                errors.append(_refusal(obj, outcome))
        for result, n in tally.items():
            counts[str(result)] = counts.get(str(result), 0) + n
        for obj, owner in plan.conflicts:
            errors.append(_error(
                obj.document.lines.line_of(("metadata", "name")), "metadata.name",
                f"{obj.kind} '{obj.name}' is already declared in {owner} "
                "(the first file by path order keeps it)",
            ))
        errors.sort(key=lambda e: (e["line"], e["field"]))
        return errors

    def _drop(
        self, session: Session, path: str, keys: Iterable[str], now: datetime, counts: dict[str, int]
    ) -> None:
        """Prune (or, with prune off, release to the API) objects that no file declares."""
        for key in keys:
            kind, name = mf.split_key(key)
            row = mf.owned_row(session, kind, name, path)
            if row is None:
                continue
            entity = kind.lower()
            if not self.config.manifests.prune:
                mf.release_object(session, kind, row.id, now)
                write_audit(session, "manifest.released", entity, name, {"path": path, "kind": kind},
                            now)
                counts["released"] = counts.get("released", 0) + 1
                continue
            if kind == "Job":
                delete_job_row(session, row, Reason.PRUNED, now, None)
            elif kind == "Node":
                delete_node_row(session, row, now, self.config, None)
            else:
                mf.delete_scenario_row(session, row.id)
                write_audit(session, "scenario.deleted", "scenario", name, {"path": path}, now)
            write_audit(session, "manifest.pruned", entity, name, {"path": path, "kind": kind}, now)
            counts["pruned"] = counts.get("pruned", 0) + 1

    def _record(
        self,
        session: Session,
        plan: FilePlan,
        before: mf.StoredFile | None,
        status: str,
        errors: list[dict[str, Any]],
        now: datetime,
        counts: dict[str, int],
    ) -> None:
        """Store the file's status row; audit and log what changed."""
        assert plan.parsed is not None
        new_content = before is None or before.content_hash != plan.parsed.content_hash
        changed_objects = any(counts.get(k) for k in ("created", "configured", "moved", "pruned",
                                                        "released"))
        applied = plan.parsed.valid and (new_content or changed_objects)
        applied_at = now if applied else before.applied_at if before is not None else None
        mf.save_manifest_file(
            session, plan.path, content_hash=plan.parsed.content_hash, status=status,
            errors=errors, objects=list(plan.keeps), applied_at=applied_at, now=now,
            exists=before is not None,
        )
        if applied:
            write_audit(session, "manifest.applied", "manifest", plan.path,
                        {"path": plan.path, "status": status, "errors": len(errors), **counts}, now)
            log.info("[Manifests] Applied %s%s", plan.path, _summary(counts))
        unchanged_errors = before is not None and before.status == status and before.errors == errors
        if status != FileStatus.OK and not unchanged_errors:
            write_audit(session, "manifest.invalid", "manifest", plan.path,
                        {"path": plan.path, "status": status, "errors": errors}, now)
            for e in errors:
                where = f"{plan.path}:{e['line']}" + (f": {e['field']}" if e["field"] else "")
                log.warning("[Manifests] %s %s: %s", status.capitalize(), where, e["message"])
        elif status == FileStatus.OK and before is not None and before.status != FileStatus.OK:
            log.info("[Manifests] %s is valid again", plan.path)

    def _sweep(self, owners: Mapping[str, str], now: datetime, result: SyncResult) -> None:
        """At the first sync: objects owned by files that no longer declare them (the table
        was lost, the directory changed while the controller was down) are dropped."""
        with self.store.read() as session:
            orphans = [
                (kind, name, path) for kind, name, path in mf.file_owned_objects(session)
                if mf.object_key(kind, name) not in owners
            ]
        by_path: dict[str, list[str]] = {}
        for kind, name, path in orphans:
            by_path.setdefault(path, []).append(mf.object_key(kind, name))
        for path, keys in sorted(by_path.items()):
            counts: dict[str, int] = {}
            with self.store.write() as session:
                self._drop(session, path, keys, now, counts)
            for name, n in counts.items():
                result.add(name, n)
            log.info("[Manifests] Dropped objects of %s, which no file declares%s", path,
                     _summary(counts))

    # --- metrics -------------------------------------------------------------------------------------

    def _gauge(self, stored: Mapping[str, mf.StoredFile]) -> None:
        self._gauge_statuses(s.status for s in stored.values())

    def _gauge_statuses(self, statuses: Iterable[str]) -> None:
        if self.metrics is not None:
            self.metrics.manifest_errors.set(sum(1 for s in statuses if s != FileStatus.OK))


@contextmanager
def _gc_spared() -> Iterator[Callable[[], None]]:
    """A function keeping what was allocated so far out of the cyclic GC until the block ends.

    A sync holds the objects of every file it parses until it has applied them: millions
    of containers on a first sync of 100,000 jobs, which each full collection walked
    again (a sixth of that sync's time). `gc.freeze()` parks them (they are still freed
    when no longer referenced) and `gc.unfreeze()` hands what is left back to the
    collector. A process that freezes objects for its own reasons is left alone.
    """
    if gc.get_freeze_count():
        yield lambda: None
        return
    try:
        yield gc.freeze
    finally:
        gc.unfreeze()


def _owned_scenarios(plan: Plan) -> dict[str, ScenarioManifest]:
    """Scenarios the processed files own: Jobs' placeholders are checked against them."""
    return {
        o.name: o.manifest
        for f in plan.files
        for o in f.owned
        if isinstance(o.manifest, ScenarioManifest)
    }


def _error(line: int, field_path: str, message: str) -> dict[str, Any]:
    return {"line": line, "field": field_path, "message": message}


def _refusal(obj: ParsedObject, outcome: ObjectResult) -> dict[str, Any]:
    """An object the apply engine refused, as an error at its field's line."""
    where = tuple(outcome.field.split(".")) if outcome.field else ("metadata", "name")
    line = obj.document.lines.line_of(where)
    message = outcome.error or "refused"
    prefix = f"{format_field(where)}: "
    if message.startswith(prefix):
        message = message[len(prefix):]
    return _error(line, format_field(where), f"{obj.kind} '{obj.name}': {message}")


def _status(plan: FilePlan, errors: Sequence[dict[str, Any]]) -> str:
    if plan.parsed is not None and not plan.parsed.valid:
        return FileStatus.INVALID
    if len(errors) > len(plan.conflicts):
        return FileStatus.INVALID
    return FileStatus.CONFLICT if plan.conflicts else FileStatus.OK


def _summary(counts: Mapping[str, int]) -> str:
    shown = [f"{n} {name}" for name, n in sorted(counts.items()) if n]
    return ": " + ", ".join(shown) if shown else ""
